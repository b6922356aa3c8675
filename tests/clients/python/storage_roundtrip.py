"""google-cloud-storage with Application Default Credentials found through
the metadata endpoint: upload one multi-MiB object by multipart upload and
one by resumable upload (in 2 MiB chunks), download both (the library checks each
CRC32C), and list them.

Usage: python storage_roundtrip.py BUCKET SIZE. Prints one JSON line.
"""

import hashlib
import io
import json
import random
import sys

import google.auth
from google.cloud import storage


def main():
    bucket_name, size = sys.argv[1], int(sys.argv[2])
    credentials, project = google.auth.default()
    data = random.Random(20).randbytes(size)
    client = storage.Client()
    bucket = client.bucket(bucket_name)
    # Up to 8 MiB without a chunk size: one multipart request.
    bucket.blob("python/multipart.bin").upload_from_string(data)
    # From a stream of unknown size: resumable, a session then PUTs of
    # 2 MiB chunks, the total given with the last one.
    bucket.blob("python/resumable.bin", chunk_size=2 * 1024 * 1024).upload_from_file(
        io.BytesIO(data)
    )
    downloaded = [
        hashlib.sha256(bucket.blob(name).download_as_bytes()).hexdigest()
        for name in ("python/multipart.bin", "python/resumable.bin")
    ]
    names = [b.name for b in client.list_blobs(bucket_name, prefix="python/")]
    print(
        json.dumps(
            {
                "credentials": type(credentials).__module__ + "." + type(credentials).__name__,
                "project": project,
                "sha256": hashlib.sha256(data).hexdigest(),
                "downloaded_sha256": downloaded,
                "names": names,
            }
        )
    )


if __name__ == "__main__":
    main()
