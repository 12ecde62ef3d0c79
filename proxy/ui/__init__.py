"""The web UI at `/_rrproxy/ui/`: imports every layer below `serve.app`, which wires it in."""
