"""Reads an object's S3 Object Lock legal hold with boto3 (AWS's own SDK, not Custodian's code)
and tries to destroy the object's stored version, as someone holding the bucket's keys could.

Usage: s3_legal_hold.py ENDPOINT BUCKET KEY
Prints JSON: {"status": "ON"|"OFF"|null, "version_delete": "deleted"|"<error code>"}.
The version delete is attempted only when the hold is ON (it must be refused then), so a held
object survives this probe and a released one is left alone.
"""

import json
import sys

import boto3
from botocore.exceptions import ClientError


def main() -> None:
    endpoint, bucket, key = sys.argv[1:4]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    try:
        answer = s3.get_object_legal_hold(Bucket=bucket, Key=key)
        status = answer.get("LegalHold", {}).get("Status")
    except ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchObjectLockConfiguration":
            raise
        status = None
    result = {"status": status, "version_delete": None}
    if status == "ON":
        version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            result["version_delete"] = "deleted"
        except ClientError as err:
            result["version_delete"] = err.response["Error"]["Code"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
