// @google-cloud/pubsub publishes over gRPC (grpc-js), which finds the proxy
// only through the lower-case https_proxy (or grpc_proxy, http_proxy).
// Usage: node pubsub.js TOPIC COUNT DEADLINE_MS. Prints one JSON line; exits
// 2 if the messages are not all published within DEADLINE_MS.
'use strict';
const {PubSub} = require('@google-cloud/pubsub');

async function main() {
  const [topicName, count, deadlineMs] = process.argv.slice(2);
  const timer = setTimeout(() => {
    console.error(`publish did not complete within ${deadlineMs} ms`);
    process.exit(2);
  }, Number(deadlineMs));
  const pubsub = new PubSub();
  const topic = pubsub.topic(topicName, {
    batching: {maxMessages: 100, maxMilliseconds: 20},
  });
  const ids = await Promise.all(
    Array.from({length: Number(count)}, (_, i) =>
      topic.publishMessage({
        data: Buffer.from(`node message ${i}`),
        attributes: {client: 'node', index: String(i)},
      })
    )
  );
  clearTimeout(timer);
  console.log(JSON.stringify({topic: topic.name, ids}));
  await pubsub.close();
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
