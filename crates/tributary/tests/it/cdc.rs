//! Change data capture the way the seeds do it, end to end from a Kinesis-compatible stream:
//! Etleap's update sequence with its bookkeeping table (seed 000), Decodable's DELETE and
//! INSERT over Debezium records (seed 003), and the DynamoDB stored procedure (seed 001).
//! After each round the target table must equal a reference model of the source table.
//! Also: what a procedure tells the client (notices, CONTEXT, OUT values) over the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};
use tributary_testkit::{KinesisFlavor, KinesisServer, TestServer};

use crate::streaming::{create_stream, kinesis, put, settings};

/// Rows of a query as text (the simple protocol's rendering), for comparison with a model.
pub(crate) async fn text_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Kinesalite with one stream, a Tributary server reading it, and a client of that server.
async fn with_stream(
    stream: &str,
    shards: i32,
) -> (
    KinesisServer,
    aws_sdk_kinesis::Client,
    TestServer,
    tokio_postgres::Client,
) {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Kinesalite);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, stream, shards).await;
    let server = TestServer::start_streaming(settings(&endpoint)).await;
    let client = server.client().await;
    (kinesis_server, kinesis, server, client)
}

/// A small deterministic generator (no seeding crate needed for a test).
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[derive(Clone, Debug)]
struct Cart {
    user_id: i64,
    price_cents: Option<i64>,
    items: i64,
    checked_out: bool,
    update_date: String,
}

/// One change of the cart table, as Etleap writes it to its stream.
struct CartChange {
    seq: u64,
    id: i64,
    op: &'static str,
    row: Cart,
}

impl CartChange {
    fn json(&self) -> String {
        let price = match self.row.price_cents {
            Some(c) => format!("{}.{:02}", c / 100, c % 100),
            None => "null".into(),
        };
        format!(
            r#"{{"id": {}, "user_id": {}, "current_price": {price}, "no_items": {}, "checked_out": {}, "update_date": {}, "op": "{}"}}"#,
            self.id,
            self.row.user_id,
            self.row.items,
            u8::from(self.row.checked_out),
            serde_json::to_string(&self.row.update_date).unwrap(),
            self.op
        )
    }
}

/// Changes with sequence numbers 1..=n over a few keys: many changes of one key per batch,
/// deletes followed by re-inserts, nulls and non-ASCII text.
fn cart_changes(n: u64) -> Vec<CartChange> {
    let mut rng = Lcg(7);
    let mut live: BTreeMap<i64, Cart> = BTreeMap::new();
    let mut changes = Vec::new();
    for seq in 1..=n {
        let id = 8320 + rng.next(9) as i64;
        let row = Cart {
            user_id: 400 + rng.next(50) as i64,
            price_cents: (rng.next(5) != 0).then(|| 100 + rng.next(9000) as i64),
            items: rng.next(10) as i64,
            checked_out: rng.next(2) == 1,
            update_date: format!(
                "2021-11-05 23:{:02} {}",
                seq % 60,
                ["café", "日本", "Zoë", "plain"][rng.next(4) as usize]
            ),
        };
        let op = if !live.contains_key(&id) {
            "I"
        } else if rng.next(4) == 0 {
            "D"
        } else {
            "U"
        };
        if op == "D" {
            live.remove(&id);
        } else {
            live.insert(id, row.clone());
        }
        changes.push(CartChange { seq, id, op, row });
    }
    changes
}

/// The cart table after applying every change up to `end` in sequence order.
fn cart_model(changes: &[CartChange], end: u64) -> Vec<Vec<Option<String>>> {
    let mut table: BTreeMap<i64, Cart> = BTreeMap::new();
    for change in changes.iter().filter(|c| c.seq <= end) {
        match change.op {
            "D" => {
                table.remove(&change.id);
            }
            _ => {
                table.insert(change.id, change.row.clone());
            }
        }
    }
    table
        .into_iter()
        .map(|(id, row)| {
            vec![
                Some(id.to_string()),
                Some(row.user_id.to_string()),
                row.price_cents
                    .map(|c| format!("{}.{:02}", c / 100, c % 100)),
                Some(row.items.to_string()),
                Some(if row.checked_out { "t" } else { "f" }.to_string()),
                Some(row.update_date),
            ]
        })
        .collect()
}

/// Seed 000's staging view and Etleap's update sequence. The capture lost the first lines of
/// the gap-detection subquery and of the DELETE and INSERT; they are reconstructed as the
/// text describes them: delete every key changed in the window, then insert the latest
/// version of each key whose latest change is not a delete.
const ETLEAP_SETUP: &str = r#"
CREATE EXTERNAL SCHEMA etleap_stream
FROM KINESIS
IAM_ROLE 'arn:aws:iam::0123456789:role/etleap';
CREATE MATERIALIZED VIEW cart_staging DISTKEY(id) SORTKEY(etleap_sequence_no) AS
SELECT
	CAST(PartitionKey as bigint) AS etleap_sequence_no,
	CAST(JSON_EXTRACT_PATH_TEXT(from_varbyte(Data, 'utf-8'), 'id') as bigint) AS id,
	JSON_PARSE(FROM_VARBYTE(Data, 'utf-8')) AS Data
FROM etleap_stream."cart";
CREATE TABLE cart (
id BIGINT,
user_id BIGINT,
current_price DECIMAL(6,2),
no_items INT,
checked_out BOOLEAN,
update_date VARCHAR(64)
);
CREATE TABLE _etleap_si (table_name VARCHAR(64), start_sequence_no BIGINT, end_sequence_no BIGINT);
INSERT INTO _etleap_si VALUES ('cart', 0, 0);
"#;

const ETLEAP_UPDATE_SEQUENCE: &str = r#"
REFRESH MATERIALIZED VIEW cart_staging;

UPDATE _etleap_si SET end_sequence_no = (
	SELECT COALESCE(MIN(etleap_sequence_no), (SELECT MAX(etleap_sequence_no) FROM cart_staging)) FROM 
		(SELECT etleap_sequence_no,
			LEAD(etleap_sequence_no, 1) OVER (ORDER BY etleap_sequence_no) - etleap_sequence_no AS diff
		FROM cart_staging 
		WHERE etleap_sequence_no > (SELECT start_sequence_no FROM _etleap_si WHERE table_name = 'cart'))
	WHERE diff > 1
) WHERE table_name = 'cart';

DELETE FROM cart WHERE id IN (
	SELECT id
	FROM cart_staging
	WHERE etleap_sequence_no > (SELECT start_sequence_no FROM _etleap_si WHERE table_name = 'cart') 
	AND etleap_sequence_no <= (SELECT end_sequence_no FROM _etleap_si WHERE table_name = 'cart')
);

INSERT INTO cart SELECT
	id,
	CAST(Data.user_id as bigint),
	CAST(Data.current_price as decimal(6,2)),
	CAST(Data.no_items as int),
	CAST(Data.checked_out as int) = 1,
	CAST(Data.update_date as varchar(64)) from
  	(SELECT id, Data,
   	ROW_NUMBER() OVER (PARTITION BY id ORDER BY etleap_sequence_no DESC) AS latest
   	FROM cart_staging
	WHERE etleap_sequence_no > (SELECT start_sequence_no FROM _etleap_si WHERE table_name = 'cart') 
	AND etleap_sequence_no <= (SELECT end_sequence_no FROM _etleap_si WHERE table_name = 'cart'))
WHERE latest = 1 AND Data.op != 'D';

UPDATE _etleap_si SET start_sequence_no = end_sequence_no WHERE table_name = 'cart';
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_etleap_update_sequence_mirrors_the_cart_table() {
    let (_kinesis_server, kinesis, server, client) = with_stream("cart", 2).await;
    client.batch_execute(ETLEAP_SETUP).await.expect("setup");

    let changes = cart_changes(120);
    let record = |c: &CartChange| (c.seq.to_string(), c.json().into_bytes());
    // Round 1: changes 1..=60 in a shuffled order across two shards, with 45 held back, so
    // the sequence stops before the gap.
    let mut rng = Lcg(11);
    let mut first: Vec<&CartChange> = changes[..60].iter().filter(|c| c.seq != 45).collect();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.next(i as u64 + 1) as usize);
    }
    put(&kinesis, "cart", first.iter().map(|c| record(c)).collect()).await;
    let rounds: [(Vec<&CartChange>, u64); 3] = [
        (vec![], 44),
        // Round 2: the held-back change and the rest arrive.
        (
            changes
                .iter()
                .filter(|c| c.seq == 45 || c.seq > 60)
                .collect(),
            120,
        ),
        // Round 3: nothing new; the sequence changes nothing.
        (vec![], 120),
    ];
    for (round, (records, expected_end)) in rounds.into_iter().enumerate() {
        put(
            &kinesis,
            "cart",
            records.iter().map(|c| record(c)).collect(),
        )
        .await;
        client
            .batch_execute(ETLEAP_UPDATE_SEQUENCE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let end = text_rows(
            &client,
            "SELECT start_sequence_no, end_sequence_no FROM _etleap_si WHERE table_name = 'cart'",
        )
        .await;
        let expected = expected_end.to_string();
        assert_eq!(
            end,
            vec![vec![Some(expected.clone()), Some(expected)]],
            "round {round}: bookkeeping"
        );
        let table = text_rows(
            &client,
            "SELECT id, user_id, current_price, no_items, checked_out, update_date FROM cart ORDER BY id",
        )
        .await;
        assert_eq!(
            table,
            cart_model(&changes, expected_end),
            "round {round}: cart differs from the source table"
        );
    }
    server.stop().await;
}

/// A Debezium change of the users table (seed 003's source).
fn debezium(
    op: &str,
    before: Option<(i64, &str, &str, Option<&str>)>,
    after: Option<(i64, &str, &str, Option<&str>)>,
) -> Vec<u8> {
    let row = |r: Option<(i64, &str, &str, Option<&str>)>| match r {
        None => "null".to_string(),
        Some((id, first, last, phone)) => format!(
            r#"{{"userid": {id}, "first_name": {}, "last_name": {}, "phone": {}}}"#,
            serde_json::to_string(first).unwrap(),
            serde_json::to_string(last).unwrap(),
            phone.map_or("null".into(), |p| serde_json::to_string(p).unwrap())
        ),
    };
    format!(
        r#"{{"before": {}, "after": {}, "op": "{op}", "ts_ms": 1}}"#,
        row(before),
        row(after)
    )
    .into_bytes()
}

const DECODABLE_MERGE: &str = r#"
REFRESH MATERIALIZED VIEW postgres_users_schema_view;
-- DELETE
with customers_flattened as (
select
case
when data.op = 'd' then data.before.userid
else data.after.userid
end as userid,
data.after.first_name,
data.after.last_name,
data.after.phone,
data.op,
approximate_arrival_timestamp ts_ms
from postgres_users_schema_view
),
customers_latest as (
select
B.userid,
A.first_name,
A.last_name,
A.phone,
A.op,
A.ts_ms ts_ms
from customers_flattened A
join (
select
userid,
max(ts_ms) ts_ms
from customers_flattened
group by userid
) B on A.userid = B.userid and A.ts_ms = B.ts_ms
ORDER BY USERID
)
delete from customers_merged
where userid in (
select userid from customers_latest
)
;
-- INSERT
insert into customers_merged
with customers_flattened as (
select
case
when data.op = 'd' then data.before.userid
else data.after.userid
end as userid,
data.after.first_name,
data.after.last_name,
data.after.phone,
data.op,
approximate_arrival_timestamp ts_ms
from postgres_users_schema_view
),
customers_latest as (
select
B.userid,
A.first_name,
A.last_name,
A.phone,
A.op,
A.ts_ms ts_ms
from customers_flattened A
join (
select
userid,
max(ts_ms) ts_ms
from customers_flattened
group by userid
) B on A.userid = B.userid and A.ts_ms = B.ts_ms
ORDER BY USERID
)
select
cast(A.userid as int),
cast(A.first_name as varchar),
cast(A.last_name as varchar),
cast(A.phone as varchar)
from customers_latest A
left join customers_merged B on A.userid=B.userid
where B.userid is null and op <> 'd'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_decodable_merge_mirrors_the_users_table() {
    let (_kinesis_server, kinesis, server, client) = with_stream("hubert-redshift", 1).await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA postgres_users_schema
FROM KINESIS
IAM_ROLE 'arn:aws:kinesis:*:0123456789:stream/*';
CREATE MATERIALIZED VIEW postgres_users_schema_view AS
SELECT approximate_arrival_timestamp,
JSON_PARSE(from_varbyte(kinesis_data , 'utf-8')) as Data
FROM postgres_users_schema."hubert-redshift"
WHERE is_utf8(kinesis_data) AND is_valid_json(from_varbyte(kinesis_data, 'utf-8'));
create table customers_merged (
userid int primary key,
first_name varchar(63) not null,
last_name varchar(63) not null,
phone varchar(63)
);"#,
        )
        .await
        .expect("seed 003 setup");
    type Row<'a> = (i64, &'a str, &'a str, Option<&'a str>);
    let ada: Row = (1, "Ada", "Lovelace", Some("555-0100"));
    let ada2: Row = (1, "Ada", "King", Some("555-0199"));
    let bob: Row = (2, "Bob", "Byron", None);
    let cy: Row = (3, "Cy", "Zoë", Some("☎ 12"));
    let cy2: Row = (3, "Cyrille", "Zoë", None);
    let bob2: Row = (2, "Bobby", "Byron", Some("555-0111"));
    let rounds: Vec<(Vec<Vec<u8>>, Vec<Row>)> = vec![
        (
            vec![
                debezium("c", None, Some(ada)),
                debezium("c", None, Some(bob)),
                debezium("u", Some(ada), Some(ada2)),
                debezium("c", None, Some(cy)),
                debezium("d", Some(bob), None),
            ],
            vec![ada2, cy],
        ),
        (
            vec![
                debezium("u", Some(cy), Some(cy2)),
                debezium("c", None, Some(bob2)),
                debezium("d", Some(ada2), None),
            ],
            vec![bob2, cy2],
        ),
    ];
    for (round, (records, expected)) in rounds.into_iter().enumerate() {
        // One record per PutRecords call, a few milliseconds apart: the seed orders changes
        // of a key by arrival time, which must differ.
        for record in records {
            put(&kinesis, "hubert-redshift", vec![("users".into(), record)]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
            .batch_execute(DECODABLE_MERGE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let table = text_rows(
            &client,
            "SELECT userid, first_name, last_name, phone FROM customers_merged ORDER BY userid",
        )
        .await;
        let model: Vec<Vec<Option<String>>> = expected
            .iter()
            .map(|(id, first, last, phone)| {
                vec![
                    Some(id.to_string()),
                    Some(first.to_string()),
                    Some(last.to_string()),
                    phone.map(str::to_string),
                ]
            })
            .collect();
        assert_eq!(table, model, "round {round}");
    }
    server.stop().await;
}

/// A DynamoDB stream record as Kinesis carries it (seed 001's document, parameterised).
fn dynamodb(
    event: &str,
    transaction: &str,
    amount: i64,
    provider: Option<&str>,
    dependents: &[&str],
) -> Vec<u8> {
    let dependents: Vec<String> = dependents
        .iter()
        .map(|d| {
            format!(
                r#"{{"M": {{"sk": {{"S": "CUSTOMER#2022-07-08T23:59:59Z#{d}"}}, "pk": {{"S": "CUSTOMER#CUST_123"}}}}}}"#
            )
        })
        .collect();
    let provider = provider
        .map(|p| format!(r#""Provider": {{"S": "{p}"}},"#))
        .unwrap_or_default();
    format!(
        r#"{{"awsRegion": "us-east-1", "eventID": "e-{transaction}-{amount}", "eventName": "{event}", "userIdentity": null, "recordFormat": "application/json", "tableName": "sample-dynamoDB",
"dynamodb": {{"ApproximateCreationDateTime": 1657294923614,
 "Keys": {{"pk": {{"S": "CUSTOMER#CUST_123"}}, "sk": {{"S": "TRANSACTION#2022-07-08T23:59:59Z#{transaction}"}}}},
 "NewImage": {{"completionDateTime": {{"S": "2022-07-08T23:59:59Z"}}, "OutofPockPercent": {{"N": 50.00}},
   "calculationRequirements": {{"M": {{"dependentIds": {{"L": [{}]}}}}}},
   "Event": {{"S": "SAMPLE"}}, {provider} "OutofPockAmount": {{"N": {amount}}}, "OutofPockMax": {{"N": 2000}}}},
 "SizeBytes": 694}},
"eventSource": "aws:dynamodb"}}"#,
        dependents.join(", ")
    )
    .into_bytes()
}

const SEED_001_PROCEDURE: &str = r#"CREATE OR REPLACE PROCEDURE SP_Customer_Transaction_Fact()
AS $$
BEGIN

set enable_case_sensitive_identifier to true;

--Update metadata audit table entry to indicate that the fact load process is running
update MetaData_ETL
set status = 'Running',
StartDate = getdate()
where JobName = 'Customer_Transaction_Fact_Load';

refresh materialized view mv_demo_super_unnest;

drop table if exists Customer_Transaction_Fact_Stg;

--Create latest record by Merging records based on approximate_arrival_timestamp
create table Customer_Transaction_Fact_Stg as
select 
m.Transaction_ID,
min(case when m.rank_Customer_ID =1 then m.Customer_ID end) Customer_ID,
min(case when m.rank_OutofPocket_Percent =1 then m.OutofPocket_Percent end) OutofPocket_Percent,
min(case when m.rank_OutofPock_Amount =1 then m.OutofPock_Amount end) OutofPock_Amount,
min(case when m.rank_OutofPocket_Max =1 then m.OutofPocket_Max end) OutofPocket_Max,
min(case when m.rank_Provider =1 then m.Provider end) Provider,
min(case when m.rank_Completion_DateTime =1 then m.Completion_DateTime end) Completion_DateTime
from
(
select *,
rank() over(partition by Transaction_ID order by case when mqp.Customer_ID is not null then 1 end, approximate_arrival_timestamp desc ) rank_Customer_ID,
rank() over(partition by Transaction_ID order by case when mqp.OutofPocket_Percent is not null then 1 end, approximate_arrival_timestamp desc ) rank_OutofPocket_Percent,
rank() over(partition by Transaction_ID order by case when mqp.OutofPock_Amount is not null then 1 end, approximate_arrival_timestamp  desc )  rank_OutofPock_Amount,
rank() over(partition by Transaction_ID order by case when mqp.OutofPocket_Max is not null then 1 end, approximate_arrival_timestamp desc ) rank_OutofPocket_Max,
rank() over(partition by Transaction_ID order by case when mqp.Provider is not null then 1 end, approximate_arrival_timestamp  desc ) rank_Provider,
rank() over(partition by Transaction_ID order by case when mqp.Completion_DateTime is not null then 1 end, approximate_arrival_timestamp desc )  rank_Completion_DateTime
from mv_demo_super_unnest mqp
where upper(mqp.event_Name) <> 'REMOVE' and mqp.approximate_arrival_timestamp > (select mde.EndDate from MetaData_ETL mde where mde.JobName = 'Customer_Transaction_Fact_Load') 
) m
group by m.Transaction_ID 
order by m.Transaction_ID
;

--Delete only impacted Transaction_ID from Fact table
delete from Customer_Transaction_Fact  
where Transaction_ID in ( select mqp.Transaction_ID from Customer_Transaction_Fact_Stg mqp);

--Insert latest records from staging table to Fact table
insert into Customer_Transaction_Fact
select * from Customer_Transaction_Fact_Stg; 

--Update metadata audit table entry to indicate that the fact load process is completed
update MetaData_ETL
set status = 'Complete',
EndDate = getdate()
where JobName = 'Customer_Transaction_Fact_Load';
END;
$$ LANGUAGE plpgsql;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_stored_procedure_loads_the_fact_table() {
    let (_kinesis_server, kinesis, server, client) = with_stream("demo-data-stream", 1).await;
    client
        .batch_execute(
            r#"SET enable_case_sensitive_identifier TO true;
CREATE EXTERNAL SCHEMA demo_schema
FROM KINESIS
IAM_ROLE default;
CREATE MATERIALIZED VIEW demo_stream_vw AS
    SELECT approximate_arrival_timestamp,
    partition_key,
    shard_id,
    sequence_number,
    json_parse(kinesis_data) as payload    
    FROM demo_schema."demo-data-stream";
REFRESH MATERIALIZED VIEW demo_stream_vw;
CREATE MATERIALIZED VIEW mv_demo_super_unnest AS
select 
substring(a."payload"."dynamodb"."Keys"."pk"."S"::varchar, position('#' in "payload"."dynamodb"."Keys"."pk"."S"::varchar)+1) as Customer_ID,
substring(a."payload"."dynamodb"."Keys"."sk"."S"::varchar, position('#TRANSACTION' in "payload"."dynamodb"."Keys"."sk"."S"::varchar)+1) as Transaction_ID,
substring(b."M"."sk"."S"::varchar, position('#CUSTOMER' in b."M"."sk"."S"::varchar)+1) Dependent_ID,
a."payload"."dynamodb"."NewImage"."OutofPockMax"."N"::int as OutofPocket_Max,
a."payload"."dynamodb"."NewImage"."OutofPockPercent"."N"::decimal(5,2) as OutofPocket_Percent,
a."payload"."dynamodb"."NewImage"."OutofPockAmount"."N"::int as OutofPock_Amount,
a."payload"."dynamodb"."NewImage"."Provider"."S"::varchar as Provider,
a."payload"."dynamodb"."NewImage"."completionDateTime"."S"::timestamptz as Completion_DateTime,
a."payload"."eventName"::varchar Event_Name,
a.approximate_arrival_timestamp
from demo_stream_vw a
left outer join a."payload"."dynamodb"."NewImage"."calculationRequirements"."M"."dependentIds"."L" b on true;
create table MetaData_ETL
(
JobName varchar(100),
StartDate timestamp, 
EndDate timestamp, 
Status varchar(50)
);
insert into MetaData_ETL 
values
('Customer_Transaction_Fact_Load', current_timestamp, current_timestamp,'Ready' );
CREATE TABLE public.Customer_Transaction_Fact (
Transaction_ID character varying(500),
Customer_ID character varying(500),
OutofPocket_Percent numeric(5,2),
OutofPock_Amount integer,
OutofPocket_Max integer,
Provider character varying(500),
completion_datetime timestamp
);"#,
        )
        .await
        .expect("seed 001 setup");
    client
        .batch_execute(SEED_001_PROCEDURE)
        .await
        .expect("seed 001 procedure");
    let fact = "SELECT transaction_id, customer_id, outofpocket_percent, outofpock_amount, outofpocket_max, provider, completion_datetime FROM Customer_Transaction_Fact ORDER BY transaction_id";
    let row = |t: &str, amount: i64, provider: Option<&str>| {
        vec![
            Some(format!("TRANSACTION#2022-07-08T23:59:59Z#{t}")),
            Some("CUST_123".to_string()),
            Some("50.00".to_string()),
            Some(amount.to_string()),
            Some("2000".to_string()),
            provider.map(str::to_string),
            // The wire renders timestamps with six fraction digits (see slt rendering).
            Some("2022-07-08 23:59:59.000000".to_string()),
        ]
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Round 1: two new transactions (one with two dependents, one without a provider).
    for record in [
        dynamodb(
            "INSERT",
            "CUST_345",
            1000,
            Some("PV-123"),
            &["CUST_567", "CUST_890"],
        ),
        dynamodb("INSERT", "CUST_346", 700, None, &["CUST_567"]),
    ] {
        put(&kinesis, "demo-data-stream", vec![("k".into(), record)]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
        .batch_execute(
            "REFRESH MATERIALIZED VIEW demo_stream_vw; CALL SP_Customer_Transaction_Fact();",
        )
        .await
        .expect("round 1");
    assert_eq!(
        text_rows(&client, fact).await,
        vec![
            row("CUST_345", 1000, Some("PV-123")),
            row("CUST_346", 700, None)
        ]
    );
    let status = text_rows(&client, "SELECT status FROM MetaData_ETL").await;
    assert_eq!(status, vec![vec![Some("Complete".to_string())]]);
    // Round 2 (after EndDate): the first transaction's amount changes; the second gets a
    // provider, then a change without one, so its latest non-null provider is kept.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for record in [
        dynamodb(
            "MODIFY",
            "CUST_345",
            1500,
            Some("PV-123"),
            &["CUST_567", "CUST_890"],
        ),
        dynamodb("MODIFY", "CUST_346", 710, Some("PV-9"), &["CUST_567"]),
        dynamodb("MODIFY", "CUST_346", 720, None, &["CUST_567"]),
    ] {
        put(&kinesis, "demo-data-stream", vec![("k".into(), record)]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
        .batch_execute(
            "REFRESH MATERIALIZED VIEW demo_stream_vw; CALL SP_Customer_Transaction_Fact();",
        )
        .await
        .expect("round 2");
    assert_eq!(
        text_rows(&client, fact).await,
        vec![
            row("CUST_345", 1500, Some("PV-123")),
            row("CUST_346", 720, Some("PV-9"))
        ]
    );
    server.stop().await;
}

/// RAISE INFO / NOTICE / WARNING reach the client as notices of that severity; an error
/// names the procedure, the line and the statement (CONTEXT); CALL returns INOUT and OUT
/// values through the extended protocol too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedures_talk_to_the_client() {
    let server = TestServer::start().await;
    let (client, mut connection) =
        tokio_postgres::connect(&server.connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (notices, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = notices.send((notice.severity().to_string(), notice.message().to_string()));
            }
        }
    });
    client
        .batch_execute(
            "CREATE TABLE t (a INT);
             CREATE PROCEDURE chatty(n INOUT int, label OUT varchar(20)) AS $$
             BEGIN
               RAISE INFO 'n is %', n;
               RAISE NOTICE 'a notice';
               RAISE WARNING 'careful: %%';
               n := n * 2;
               label := 'doubled';
               IF n > 100 THEN
                 INSERT INTO t VALUES ('not a number');
               END IF;
             END;
             $$ LANGUAGE plpgsql;",
        )
        .await
        .expect("create");
    let row = client
        .query_one("CALL chatty(21)", &[])
        .await
        .expect("call");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "doubled");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let notice = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("notices arrive")
            .expect("connection open");
        seen.push(notice);
    }
    assert_eq!(
        seen,
        vec![
            ("INFO".to_string(), "n is 21".to_string()),
            ("NOTICE".to_string(), "a notice".to_string()),
            ("WARNING".to_string(), "careful: %".to_string()),
        ]
    );
    let err = client
        .simple_query("CALL chatty(60)")
        .await
        .expect_err("the insert fails");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P02", "{db:?}");
    let context = db.where_().expect("CONTEXT names the statement");
    assert!(
        context.contains("SQL statement \"INSERT INTO t VALUES ('not a number')\"")
            && context.contains("PL/pgSQL function \"chatty\" line 9 at SQL statement"),
        "{context}"
    );
    // The session goes on.
    let rows = client.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    // SHOW PROCEDURE gives the definition back, by name or by name and input types.
    for show in ["SHOW PROCEDURE chatty", "SHOW PROCEDURE public.chatty(int)"] {
        let definition = text_rows(&client, show).await;
        let text = definition[0][0].clone().expect("a definition");
        assert!(
            text.starts_with(
                "CREATE OR REPLACE PROCEDURE public.chatty(INOUT n integer, OUT label character varying(20))\nLANGUAGE plpgsql\nAS $$"
            ) && text.contains("RAISE INFO 'n is %', n;")
                && text.ends_with("$$"),
            "{text}"
        );
    }
    let err = client
        .simple_query("SHOW PROCEDURE chatty(varchar)")
        .await
        .expect_err("no such overload");
    assert_eq!(err.code().unwrap().code(), "42883");
    server.stop().await;
}
