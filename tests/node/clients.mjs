// The Node clients people use with an OpenAI-compatible server, run against a real cuelog server:
// the OpenAI Node SDK and the Vercel AI SDK. `node clients.mjs` with CUELOG_URL and CUELOG_KEY
// set; every check is an assertion, so a failure exits non-zero with what differed.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { z } from "zod";

const baseURL = `${process.env.CUELOG_URL}/v1`;
const apiKey = process.env.CUELOG_KEY;
const checks = [];

async function check(name, body) {
  await body();
  checks.push(name);
}

const lookupFunction = {
  type: "function",
  function: {
    name: "lookup",
    description: "Look a word up.",
    parameters: { type: "object", properties: { q: { type: "string" } } },
  },
};

const sdk = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

await check("openai chat", async () => {
  const done = await sdk.chat.completions.create({
    model: "default",
    messages: [{ role: "user", content: "hello node" }],
  });
  assert.equal(done.choices[0].message.content, "Echo: hello node");
});

await check("openai chat tools", async () => {
  const messages = [{ role: "user", content: '/tool lookup {"q": "cue"}' }];
  const first = await sdk.chat.completions.create({
    model: "default",
    messages,
    tools: [lookupFunction],
  });
  assert.equal(first.choices[0].finish_reason, "tool_calls");
  const call = first.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, "lookup");
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: "a signal" });
  const second = await sdk.chat.completions.create({
    model: "default",
    messages,
    tools: [lookupFunction],
  });
  assert.equal(second.choices[0].message.content, "Tool lookup returned: a signal");
});

await check("openai chat stream max_tokens", async () => {
  const stream = await sdk.chat.completions.create({
    model: "default",
    messages: [{ role: "user", content: "one two three four five" }],
    max_tokens: 3,
    stream: true,
  });
  let text = "";
  let finish = null;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += choice.delta.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
  assert.equal(text.trim(), "Echo: one two");
  assert.equal(finish, "length");
});

await check("openai responses stream", async () => {
  const stream = sdk.responses.stream({ model: "default", input: "streamed node" });
  const kinds = [];
  for await (const event of stream) kinds.push(event.type);
  const final = await stream.finalResponse();
  assert.equal(final.output_text, "Echo: streamed node");
  assert.equal(kinds.at(-1), "response.completed");
  assert.ok(kinds.includes("response.output_item.done"));
});

const provider = createOpenAI({ baseURL, apiKey });
const lookup = tool({
  description: "Look a word up.",
  inputSchema: z.object({ q: z.string() }),
  execute: async ({ q }) => `found ${q}`,
});

for (const [label, model] of [
  ["responses", provider("default")],
  ["chat", provider.chat("default")],
]) {
  await check(`ai generateText ${label}`, async () => {
    const result = await generateText({ model, prompt: "hello ai" });
    assert.equal(result.text, "Echo: hello ai");
  });

  await check(`ai generateText tool ${label}`, async () => {
    const result = await generateText({
      model,
      prompt: '/tool lookup {"q": "cue"}',
      tools: { lookup },
      stopWhen: stepCountIs(3),
    });
    assert.equal(result.steps.length, 2);
    assert.equal(result.text, "Tool lookup returned: found cue");
  });

  await check(`ai streamText tool ${label}`, async () => {
    const result = streamText({
      model,
      prompt: '/tool lookup {"q": "log"}',
      tools: { lookup },
      stopWhen: stepCountIs(3),
    });
    const kinds = [];
    for await (const part of result.fullStream) kinds.push(part.type);
    assert.equal(await result.text, "Tool lookup returned: found log");
    assert.ok(kinds.includes("tool-call") && kinds.includes("tool-result"), kinds.join());
    // The text part is opened and ended (a missing output_item.done left it open).
    assert.ok(kinds.indexOf("text-end") > kinds.indexOf("text-start"), kinds.join());
    assert.equal(kinds.at(-1), "finish");
  });

  await check(`ai image ${label}`, async () => {
    const result = await generateText({
      model,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "see" },
            { type: "image", image: new Uint8Array([137, 80, 78, 71]), mediaType: "image/png" },
          ],
        },
      ],
    });
    assert.match(result.text, /^Echo: see \[image image\/png 4 bytes sha256 [0-9a-f]{16}\]$/);
  });

  await check(`ai maxOutputTokens ${label}`, async () => {
    const result = await generateText({ model, prompt: "a b c d e f", maxOutputTokens: 2 });
    assert.equal(result.text.trim(), "Echo: a");
    assert.equal(result.finishReason, "length");
  });
}

console.log(JSON.stringify({ checks }));
