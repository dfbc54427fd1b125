"""boto3 against Tributary's embedded stream service: the Kinesis operations a producer or a
consumer uses, Kinesis' limits and errors. Usage: stream_service_check.py <port> <phase>.

Phase "write" creates the stream "orders" and writes 1,000 records; phase "read" (after a
restart of the server) checks they are all still there, in order, and writes 10 more.
"""

import sys
import time

import boto3
from botocore.exceptions import ClientError

port, phase = int(sys.argv[1]), sys.argv[2]
kinesis = boto3.client("kinesis", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                       aws_access_key_id="any", aws_secret_access_key="any")


def error_code(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as err:
        return err.response["Error"]["Code"]
    raise AssertionError(f"{call.__name__} {kwargs} did not fail")


def read_all(stream):
    records = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            out = kinesis.get_records(ShardIterator=iterator, Limit=300)
            records += [(shard["ShardId"], r) for r in out["Records"]]
            iterator = out["NextShardIterator"]
            if not out["Records"]:
                break
    return records


if phase == "write":
    kinesis.create_stream(StreamName="orders", ShardCount=3)
    summary = kinesis.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 3, summary
    assert "orders" in kinesis.list_streams()["StreamNames"]
    shards = kinesis.describe_stream(StreamName="orders")["StreamDescription"]["Shards"]
    assert [s["ShardId"] for s in shards] == [f"shardId-{i:012d}" for i in range(3)]
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert shards[2]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    for start in range(0, 1000, 500):
        out = kinesis.put_records(StreamName="orders", Records=[
            {"PartitionKey": f"customer-{i % 17}", "Data": f'{{"order": {i}}}'.encode()}
            for i in range(start, start + 500)])
        assert out["FailedRecordCount"] == 0, out
    one = kinesis.put_record(StreamName="orders", PartitionKey="customer-3", Data=b'{"order": 1000}')
    # One partition key always lands on one shard, in order.
    same = kinesis.put_record(StreamName="orders", PartitionKey="customer-3", Data=b'{"order": 1001}')
    assert same["ShardId"] == one["ShardId"]
    assert int(same["SequenceNumber"]) > int(one["SequenceNumber"])
    iterator = kinesis.get_shard_iterator(StreamName="orders", ShardId=one["ShardId"],
                                          ShardIteratorType="AT_SEQUENCE_NUMBER",
                                          StartingSequenceNumber=one["SequenceNumber"])["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert [r["Data"] for r in records] == [b'{"order": 1000}', b'{"order": 1001}'], records
    iterator = kinesis.get_shard_iterator(StreamName="orders", ShardId=one["ShardId"],
                                          ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                          StartingSequenceNumber=one["SequenceNumber"])["ShardIterator"]
    assert len(kinesis.get_records(ShardIterator=iterator)["Records"]) == 1
    latest = kinesis.get_shard_iterator(StreamName="orders", ShardId=one["ShardId"],
                                        ShardIteratorType="LATEST")["ShardIterator"]
    assert kinesis.get_records(ShardIterator=latest)["Records"] == []
    later = kinesis.get_shard_iterator(StreamName="orders", ShardId=one["ShardId"],
                                       ShardIteratorType="AT_TIMESTAMP",
                                       Timestamp=time.time() + 60)["ShardIterator"]
    assert kinesis.get_records(ShardIterator=later)["Records"] == []
    # Kinesis' limits and errors.
    assert error_code(kinesis.put_records, StreamName="orders", Records=[
        {"PartitionKey": "k", "Data": b"x"}] * 501) == "ValidationException"
    assert error_code(kinesis.put_record, StreamName="orders", PartitionKey="k",
                      Data=b"x" * (1024 * 1024 + 1)) == "ValidationException"
    assert error_code(kinesis.put_record, StreamName="nope", PartitionKey="k",
                      Data=b"x") == "ResourceNotFoundException"
    assert error_code(kinesis.create_stream, StreamName="orders", ShardCount=1) == "ResourceInUseException"
    assert error_code(kinesis.get_records, ShardIterator="bm90IGFuIGl0ZXJhdG9y") == "InvalidArgumentException"
    assert error_code(kinesis.get_shard_iterator, StreamName="orders", ShardId="shardId-000000000009",
                      ShardIteratorType="TRIM_HORIZON") == "ResourceNotFoundException"
    kinesis.create_stream(StreamName="scratch", ShardCount=1)
    kinesis.delete_stream(StreamName="scratch")
    assert "scratch" not in kinesis.list_streams()["StreamNames"]
    assert len(read_all("orders")) == 1002
elif phase == "read":
    records = read_all("orders")
    assert len(records) == 1002, len(records)
    by_shard = {}
    for shard, r in records:
        by_shard.setdefault(shard, []).append(int(r["SequenceNumber"]))
    for sequences in by_shard.values():
        assert sequences == sorted(sequences), "records come back in sequence order"
    out = kinesis.put_records(StreamName="orders", Records=[
        {"PartitionKey": f"customer-{i}", "Data": f'{{"order": {i}}}'.encode()}
        for i in range(2000, 2010)])
    assert out["FailedRecordCount"] == 0
    new = {r["SequenceNumber"] for r in out["Records"]}
    old = {r["SequenceNumber"] for _, r in records}
    assert not new & old, "sequence numbers are not reused after a restart"
else:
    sys.exit(f"unknown phase {phase}")
print("ok")
