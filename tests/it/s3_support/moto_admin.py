#!/usr/bin/env python3
"""Administration of the moto server the S3 integration tests (tests/it/s3.rs) start.

Usage: python3 moto_admin.py http://127.0.0.1:PORT

Reads one JSON command per line on stdin and answers one JSON line on stdout, so one Python
process (boto3 is slow to import) serves a whole test run; it exits at the end of stdin.

The server runs with INITIAL_NO_AUTH_ACTION_COUNT=3: the first three requests are not
authenticated, and they create an "admin" IAM user, its access key and an inline policy that
allows everything. Every later request, this script's included, is checked (SigV4 and IAM).

Commands ({"op": ...}):
  init                          -> {"access_key", "secret_key"} of the admin user (once)
  user    name                  -> {"access_key", "secret_key"} of a new user with no policy
  bucket  name                  -> {} (creates the bucket)
  put     bucket key hex        -> {"etag"} (uploads the bytes given in hex; the ETag, quoted)
  get     bucket key            -> {"hex"} (the object's bytes, in hex)
  role    name                  -> {"access_key", "secret_key", "token"}: temporary credentials
                                   of a new role allowed s3:GetObject (STS AssumeRole), as an
                                   EC2 instance role hands them out through IMDS
Errors answer {"error": "..."}.
"""

import json
import sys

try:
    import boto3
    from botocore.config import Config
except ImportError as e:  # pragma: no cover - reported to the Rust side
    print(json.dumps({"error": f"python3 cannot import boto3 ({e}); install 'moto[server]>=5,<6'"}), flush=True)
    sys.exit(1)

ENDPOINT = sys.argv[1]
REGION = "us-east-1"
CONFIG = Config(
    connect_timeout=5,
    read_timeout=20,
    retries={"max_attempts": 1},
    s3={"addressing_style": "path"},
)


def client(service, access_key, secret_key):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=CONFIG,
    )


ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)

admin = None  # (access_key, secret_key) once initialised
admin_arn = None


def keys_of(iam, name):
    """A new user and its access key: (access key id, secret, user ARN)."""
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"], arn


def handle(cmd):
    global admin, admin_arn
    op = cmd["op"]
    if op == "init":
        if admin is None:
            # The three unauthenticated requests.
            iam = client("iam", "bootstrap", "bootstrap")
            access, secret, admin_arn = keys_of(iam, "admin")
            iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ALLOW_ALL)
            admin = (access, secret)
        return {"access_key": admin[0], "secret_key": admin[1]}
    if admin is None:
        raise RuntimeError("send init first")
    if op == "user":
        access, secret, _ = keys_of(client("iam", *admin), cmd["name"])
        return {"access_key": access, "secret_key": secret}
    s3 = client("s3", *admin)
    if op == "bucket":
        s3.create_bucket(Bucket=cmd["name"])
        return {}
    if op == "put":
        body = bytes.fromhex(cmd["hex"])
        resp = s3.put_object(Bucket=cmd["bucket"], Key=cmd["key"], Body=body)
        return {"etag": resp["ETag"]}
    if op == "get":
        resp = s3.get_object(Bucket=cmd["bucket"], Key=cmd["key"])
        return {"hex": resp["Body"].read().hex()}
    if op == "role":
        iam = client("iam", *admin)
        # On EC2 the principal is the service ec2.amazonaws.com; moto checks the trust policy
        # against the caller, so the admin user assumes the role here.
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "sts:AssumeRole"}],
        }
        role = iam.create_role(RoleName=cmd["name"], AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        get_object = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/*"}],
        }
        iam.put_role_policy(RoleName=cmd["name"], PolicyName="get-object", PolicyDocument=json.dumps(get_object))
        creds = client("sts", *admin).assume_role(RoleArn=role["Arn"], RoleSessionName="i-0123456789abcdef0")[
            "Credentials"
        ]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
        }
    raise RuntimeError(f"unknown op {op!r}")


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as e:  # every failure goes back to the test, which shows it
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
