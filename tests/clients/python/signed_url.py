"""google-cloud-storage with Application Default Credentials found through
the metadata endpoint (Compute credentials, which hold no key): a V4 signed
URL for one object, signed through IAM signBlob as the metadata server's
account, in the form Google documents for such credentials.

Usage: python signed_url.py BUCKET OBJECT METHOD. Prints one JSON line.
"""

import datetime
import json
import sys

import google.auth
import google.auth.transport.requests
from google.cloud import storage


def main():
    bucket_name, object_name, method = sys.argv[1], sys.argv[2], sys.argv[3]
    credentials, project = google.auth.default()
    # Compute credentials learn their email and token from the metadata
    # server on refresh.
    credentials.refresh(google.auth.transport.requests.Request())
    client = storage.Client()
    blob = client.bucket(bucket_name).blob(object_name)
    url = blob.generate_signed_url(
        version="v4",
        expiration=datetime.timedelta(minutes=15),
        method=method,
        service_account_email=credentials.service_account_email,
        access_token=credentials.token,
    )
    print(
        json.dumps(
            {
                "credentials": type(credentials).__module__ + "." + type(credentials).__name__,
                "email": credentials.service_account_email,
                "url": url,
            }
        )
    )


if __name__ == "__main__":
    main()
