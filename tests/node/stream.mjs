// The openai npm client, streaming a Responses API answer. Where it goes comes from the
// environment only: OPENAI_BASE_URL (the base-URL route), or HTTPS_PROXY with
// NODE_USE_ENV_PROXY=1 and NODE_EXTRA_CA_CERTS (what `rrproxy env` prints).
// Prints one JSON line per event as it arrives, then one line with the response's
// Rrproxy-Source header and the text.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: "sk-node-test-key", maxRetries: 0 });
const { data: stream, response } = await client.responses
  .create({ model: "gpt-4o", input: process.argv[2] ?? "Say hello", stream: true })
  .withResponse();
let text = "";
for await (const event of stream) {
  if (event.type === "response.output_text.delta") text += event.delta;
  process.stdout.write(JSON.stringify({ event: event.type }) + "\n");
}
process.stdout.write(
  JSON.stringify({ source: response.headers.get("rrproxy-source"), text }) + "\n",
);
