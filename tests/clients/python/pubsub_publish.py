"""google-cloud-pubsub publishes over gRPC (C-core), which finds the proxy
only through the lower-case https_proxy (or grpc_proxy, http_proxy).

Usage: python pubsub_publish.py TOPIC_ID COUNT [DEADLINE_S]. Prints one JSON
line; exits 2 if the messages are not all published within DEADLINE_S
(default 60).
"""

import concurrent.futures
import json
import os
import sys

import google.auth
from google.cloud import pubsub_v1


def main():
    topic_id, count = sys.argv[1], int(sys.argv[2])
    deadline = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    _, project = google.auth.default()
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, topic_id)
    futures = [
        publisher.publish(topic, f"python message {i}".encode(), client="python", index=str(i))
        for i in range(count)
    ]
    try:
        ids = [f.result(timeout=deadline) for f in futures]
    except concurrent.futures.TimeoutError:
        print(f"publish did not complete within {deadline} s", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)  # the publisher's threads would keep a plain exit waiting
    print(json.dumps({"topic": topic, "ids": ids}))


if __name__ == "__main__":
    main()
