"""Settings that point the AWS provider at moto (tests/kms_doubles/aws.py)."""

AWS = {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
# Fewer retries and a shorter deadline than the defaults, so that the outage tests end soon.
FAST = {"KeyManagement__TimeoutSeconds": "10", "KeyManagement__MaxRetries": "2"}
