//! The catalog's contents: one immutable snapshot per catalog version.
//!
//! Names are stored exactly as the SQL layer normalised them; this module never folds case.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::SqlType;
use crate::{Error, Result};

/// The database every new data root starts with, as in Redshift.
pub const DEFAULT_DATABASE: &str = "dev";
/// The schema every database starts with.
pub const DEFAULT_SCHEMA: &str = "public";
/// The superuser every data root starts with.
pub const SUPERUSER: &str = "admin";

/// One catalog version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    /// This snapshot's version; version N is stored as the N-th catalog file.
    pub version: u64,
    /// The namespace GUID of this data root (data sharing names producers by it).
    pub namespace: Uuid,
    /// The next object identifier to hand out (pg_class.oid and friends).
    pub next_oid: u32,
    pub users: BTreeMap<String, User>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Group>,
    pub databases: BTreeMap<String, Database>,
    /// Privileges granted on objects, by the object's oid (oids are never reused, so a
    /// dropped object's grants never reach a new one), then by grantee.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<u32, BTreeMap<Grantee, BTreeSet<Privilege>>>,
    /// Datashares this namespace produces, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datashares: BTreeMap<String, Datashare>,
}

/// A group of users (`CREATE GROUP`); privileges granted to it apply to its members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub oid: u32,
    pub members: BTreeSet<String>,
}

/// Who a privilege is granted to. Stored as a map key: `user:name`, `group:name`, `public`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grantee {
    User(String),
    Group(String),
    Public,
}

impl Grantee {
    /// The grantee as Redshift's system views print it.
    pub fn describe(&self) -> String {
        match self {
            Grantee::User(name) => name.clone(),
            Grantee::Group(name) => format!("group {name}"),
            Grantee::Public => "public".into(),
        }
    }
}

impl Serialize for Grantee {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let text = match self {
            Grantee::User(name) => format!("user:{name}"),
            Grantee::Group(name) => format!("group:{name}"),
            Grantee::Public => "public".into(),
        };
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Grantee {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "public" {
            return Ok(Grantee::Public);
        }
        if let Some(name) = text.strip_prefix("user:") {
            return Ok(Grantee::User(name.to_string()));
        }
        if let Some(name) = text.strip_prefix("group:") {
            return Ok(Grantee::Group(name.to_string()));
        }
        Err(serde::de::Error::custom(format!(
            "unknown grantee {text:?}"
        )))
    }
}

/// A privilege on a database object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    References,
    /// Schemas, databases, datashares and languages.
    Usage,
    /// Schemas and databases.
    Create,
    /// Databases: temporary tables.
    Temp,
    /// Procedures and functions.
    Execute,
}

impl Privilege {
    pub fn name(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::References => "REFERENCES",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Temp => "TEMP",
            Privilege::Execute => "EXECUTE",
        }
    }
}

/// A datashare (`CREATE DATASHARE`): objects of one database that other namespaces may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Datashare {
    pub oid: u32,
    pub owner: String,
    /// The database whose objects the share holds.
    pub database: String,
    /// Schemas added (`ADD SCHEMA`): consumers see these schemas.
    pub schemas: BTreeSet<String>,
    /// Tables and views added (`ADD TABLE`), as (schema, name).
    pub relations: BTreeSet<(String, String)>,
    /// `SET INCLUDENEW = TRUE FOR SCHEMA s`: every relation of these schemas is shared,
    /// including ones created later.
    pub include_new: BTreeSet<String>,
    /// Namespaces granted USAGE.
    pub consumers: BTreeSet<Uuid>,
    /// `SET PUBLICACCESSIBLE`, recorded.
    #[serde(default)]
    pub publicly_accessible: bool,
}

impl Datashare {
    /// True if the share exposes `schema.name` (its schema must be in the share too).
    pub fn shares_relation(&self, schema: &str, name: &str) -> bool {
        self.schemas.contains(schema)
            && (self.include_new.contains(schema)
                || self
                    .relations
                    .contains(&(schema.to_string(), name.to_string())))
    }
}

/// A consumer's database made from another namespace's datashare
/// (`CREATE DATABASE d FROM DATASHARE s OF NAMESPACE 'guid'`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedDatabase {
    pub namespace: Uuid,
    pub datashare: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub oid: u32,
    pub superuser: bool,
    /// CREATEDB: may create databases.
    #[serde(default)]
    pub create_database: bool,
    /// None: no password is set, so the user can only log in where trust applies (loopback).
    pub password: Option<StoredPassword>,
}

/// Password verifiers; the password itself is never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPassword {
    /// SCRAM-SHA-256 salted password (hex) and its salt (hex) and iteration count.
    pub scram_salted_hex: String,
    pub scram_salt_hex: String,
    pub scram_iterations: u32,
    /// `md5(password || username)` as hex, the verifier of Postgres MD5 authentication.
    pub md5_hex: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub oid: u32,
    pub owner: String,
    pub schemas: BTreeMap<String, Schema>,
    /// Set for a database made from another namespace's datashare: it has no schemas of its
    /// own; its contents are the producer's shared objects, read in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<SharedDatabase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub oid: u32,
    pub owner: String,
    pub relations: BTreeMap<String, Relation>,
    /// Set for `CREATE EXTERNAL SCHEMA`: the schema's relations are a source's streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSource>,
    /// Stored procedures, by signature (`name(type, ...)` of the input arguments), so that
    /// overloads of one name live side by side.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub procedures: BTreeMap<String, Procedure>,
}

/// A stored procedure (`CREATE PROCEDURE ... LANGUAGE plpgsql`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Procedure {
    pub oid: u32,
    pub owner: String,
    pub name: String,
    pub arguments: Vec<ProcedureArgument>,
    /// The body as written between the dollar quotes.
    pub body: String,
    /// NONATOMIC: each statement commits on its own instead of the call being one transaction.
    pub nonatomic: bool,
    /// SECURITY DEFINER: the body runs with the owner's rights (else the caller's).
    pub security_definer: bool,
    /// `SET name TO value` clauses: settings in force while the body runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, String)>,
}

/// One argument of a procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureArgument {
    /// None for an unnamed argument (reachable as `$n`).
    pub name: Option<String>,
    pub mode: ArgumentMode,
    pub sql_type: SqlType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgumentMode {
    In,
    Out,
    InOut,
}

impl ArgumentMode {
    /// Whether CALL passes a value for the argument (IN and INOUT).
    pub fn is_input(self) -> bool {
        !matches!(self, ArgumentMode::Out)
    }

    /// Whether CALL returns the argument's final value (OUT and INOUT).
    pub fn is_output(self) -> bool {
        !matches!(self, ArgumentMode::In)
    }
}

impl Procedure {
    /// The key the procedure is stored under: its name and input argument types.
    pub fn signature(&self) -> String {
        let types: Vec<SqlType> = self
            .arguments
            .iter()
            .filter(|a| a.mode.is_input())
            .map(|a| a.sql_type.clone())
            .collect();
        procedure_signature(&self.name, &types)
    }
}

/// `name(type, ...)` with the types' base names (lengths and precisions do not distinguish
/// overloads, as in Postgres).
pub fn procedure_signature(name: &str, input_types: &[SqlType]) -> String {
    let types: Vec<String> = input_types.iter().map(SqlType::base_name).collect();
    format!("{name}({})", types.join(", "))
}

/// Where an external schema's streams come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExternalSource {
    /// `FROM KINESIS [REGION 'r'] IAM_ROLE {default | 'arn'}`.
    Kinesis {
        region: Option<String>,
        /// `default`, or the role's ARN as given.
        iam_role: String,
    },
    /// `FROM KAFKA ... URI 'host:port,...'` or `FROM MSK ... { URI | CLUSTER_ARN }`.
    Kafka {
        /// `MSK` or `KAFKA`, as written.
        flavor: String,
        /// The bootstrap brokers (`URI`).
        uri: Option<String>,
        cluster_arn: Option<String>,
        iam_role: Option<String>,
        /// `none`, `iam` (MSK), `mtls`, or beyond Redshift `sasl`.
        authentication: String,
        /// The rest of the options as written (lower-case keys): `authentication_arn`,
        /// `secret_arn`, and for self-managed clusters the TLS and SASL settings.
        options: BTreeMap<String, String>,
    },
    /// `FROM REDSHIFT DATABASE 'd' SCHEMA 's'`: a schema of another database of this
    /// instance (usually one made from a datashare), under a local name.
    Redshift { database: String, schema: String },
}

impl ExternalSource {
    /// The source's name, as Redshift's `svv_external_schemas` shows it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ExternalSource::Kinesis { .. } => "KINESIS",
            ExternalSource::Kafka { flavor, .. } if flavor == "MSK" => "MSK",
            ExternalSource::Kafka { .. } => "KAFKA",
            ExternalSource::Redshift { .. } => "REDSHIFT",
        }
    }

    /// True for a stream source (Kinesis or Kafka), whose relations are streams.
    pub fn is_stream(&self) -> bool {
        !matches!(self, ExternalSource::Redshift { .. })
    }

    /// True for a Kafka cluster (MSK, Apache Kafka, Confluent).
    pub fn is_kafka(&self) -> bool {
        matches!(self, ExternalSource::Kafka { .. })
    }
}

/// What makes a table a materialized view: its definition, and for a streaming view how far it
/// has read its stream (the positions change in the same catalog commit as the rows read up
/// to them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaterializedView {
    /// The defining query, as SQL text.
    pub sql: String,
    /// Where the rows come from: a stream read incrementally, or the query run again by each
    /// refresh (a view over tables).
    #[serde(default, skip_serializing_if = "ViewInput::is_stream")]
    pub input: ViewInput,
    /// The external schema and the stream (case-sensitive) the view reads.
    pub source_schema: String,
    pub stream: String,
    pub auto_refresh: bool,
    /// Opaque to the catalog: the stream reader's positions (null before the first refresh).
    pub positions: serde_json::Value,
    /// Set when the view aggregates: its group key columns, maintained by merging each
    /// micro-batch's partial aggregates into the stored rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateLayout>,
    /// Set for a mirror table (`CREATE MIRROR TABLE`): the stream carries change records that
    /// are applied by key instead of rows that are appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
}

/// How a mirror table reads its change stream and keeps its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorSpec {
    pub format: ChangeFormat,
    /// The primary key columns: a change replaces (or deletes) the row with its key.
    pub key: Vec<String>,
    /// The path in the change record whose value orders changes of one key; None orders them
    /// by stream position.
    pub order: Option<Vec<String>>,
    /// Set when the mirror reads its stream through a streaming view's query (`FROM view`):
    /// the view's name. The view's rows are the change records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_view: Option<String>,
    /// The apply sequence number the next stored change gets (monotonic; 0 marks folded rows).
    pub next_sequence: i64,
    /// Change rows stored since the last fold into the base rows.
    pub unfolded: u64,
    /// Base rows (tombstones included) written by the last fold.
    pub base_rows: u64,
    /// The newest ordering value among the base rows (set by each fold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_newest: Option<Vec<u8>>,
    /// The oldest ordering value among the changes stored since the last fold. While it is
    /// not older than `base_newest`, every stored change is newer than every base row and
    /// readers skip comparing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_oldest: Option<Vec<u8>>,
    /// Folds so far. A fold computed in the background commits only if no other fold
    /// committed since it read the table.
    #[serde(default)]
    pub folds: u64,
    /// The mirror's key table: the newest ordering value of every key the mirror has seen,
    /// deleted keys included, so that a change older than what the mirror holds is ignored.
    /// Set for mirrors whose Delta table holds exactly their live rows (the declared columns
    /// only); None for a mirror stored by an earlier release as base rows plus changes with
    /// hidden columns, which its next round converts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyTable>,
}

/// A Delta table a catalog object keeps beside its main table, pinned in the same catalog
/// commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTable {
    /// Where its files live, relative to the storage root.
    pub path: String,
    /// The version readers of this catalog version use.
    pub version: u64,
    /// A mirror's key table holds its ordering values as BIGINT (each change's ordering
    /// value is then an integer), instead of as order-preserving bytes. False for key tables
    /// created by earlier releases.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub integer_order: bool,
}

/// The shape of the change records of a mirror table's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeFormat {
    /// Debezium JSON: `op` c / u / d / r with `before` / `after`, with or without the schema
    /// envelope.
    Debezium,
    /// AWS DMS JSON: `data` with `metadata.operation` insert / update / delete / load.
    Dms,
    /// DynamoDB stream records: `eventName` INSERT / MODIFY / REMOVE with `dynamodb.Keys`,
    /// `NewImage`, `OldImage`.
    Dynamodb,
    /// A flat row whose `column` holds I / U / D.
    Operation { column: String },
}

impl ChangeFormat {
    /// The format as `FORMAT ...` names it.
    pub fn describe(&self) -> String {
        match self {
            ChangeFormat::Debezium => "DEBEZIUM".into(),
            ChangeFormat::Dms => "DMS".into(),
            ChangeFormat::Dynamodb => "DYNAMODB".into(),
            ChangeFormat::Operation { column } => format!("OPERATION COLUMN {column}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewInput {
    /// The stream of an external schema; `source_schema` and `stream` name it.
    #[default]
    Stream,
    /// Tables and views of the catalog; REFRESH recomputes the query.
    Query,
}

impl ViewInput {
    pub fn is_stream(&self) -> bool {
        matches!(self, ViewInput::Stream)
    }
}

/// How an aggregating view's stored columns merge: for each column, `key`, `sum` (COUNT and
/// SUM), `min`, `max`, or `avg:<count column>` (the average, weighted by a hidden count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateLayout {
    pub merges: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Relation {
    Table(Table),
    View(View),
}

impl Relation {
    pub fn oid(&self) -> u32 {
        match self {
            Relation::Table(t) => t.oid,
            Relation::View(v) => v.oid,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub oid: u32,
    pub owner: String,
    /// Where the table's files live, relative to the storage root. Stable across renames.
    pub path: String,
    /// The table version that readers of this catalog version use.
    pub version: u64,
    pub columns: Vec<Column>,
    /// Informational constraints (Redshift records but does not enforce them).
    pub constraints: Vec<Constraint>,
    pub distribution: Distribution,
    pub backup: bool,
    /// Set for a streaming materialized view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialized: Option<Box<MaterializedView>>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// A mirror table's key table.
    pub fn key_table(&self) -> Option<&KeyTable> {
        self.materialized.as_ref()?.mirror.as_ref()?.keys.as_ref()
    }

    /// Every Delta table the table's rows live in, with its pinned version: its own, and a
    /// mirror's key table.
    pub fn storage_pins(&self) -> Vec<(String, u64)> {
        let mut pins = vec![(self.path.clone(), self.version)];
        if let Some(keys) = self.key_table() {
            pins.push((keys.path.clone(), keys.version));
        }
        pins
    }

    /// The pinned version of `path` if it is one of the table's Delta tables.
    pub fn pin_mut(&mut self, path: &str) -> Option<&mut u64> {
        if self.path == path {
            return Some(&mut self.version);
        }
        let keys = self.materialized.as_mut()?.mirror.as_mut()?.keys.as_mut()?;
        (keys.path == path).then_some(&mut keys.version)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub sql_type: SqlType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text, evaluated at insert time.
    pub default: Option<String>,
    pub identity: Option<Identity>,
    /// ENCODE, recorded as given.
    pub encode: Option<String>,
}

/// IDENTITY(seed, step) and the next value to hand out. The counter advances in the same
/// catalog commit as the rows that used it, so values are never reused after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub seed: i64,
    pub step: i64,
    pub next: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Constraint {
    PrimaryKey {
        columns: Vec<String>,
    },
    Unique {
        columns: Vec<String>,
    },
    ForeignKey {
        columns: Vec<String>,
        references: String,
        referenced_columns: Vec<String>,
    },
}

/// DISTSTYLE / DISTKEY / SORTKEY, recorded as given; a single node has nothing to distribute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub diststyle: Option<String>,
    pub distkey: Option<String>,
    pub sortkey: Vec<String>,
    /// COMPOUND or INTERLEAVED, when given.
    pub sortkey_kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub oid: u32,
    pub owner: String,
    /// The view's defining query, as SQL text.
    pub sql: String,
    /// Column names given in `CREATE VIEW v (a, b) AS ...`, if any.
    pub column_names: Vec<String>,
}

impl CatalogState {
    /// The catalog of a brand-new data root: database `dev`, schema `public`, user `admin`.
    pub fn bootstrap(admin_password: Option<StoredPassword>) -> Self {
        let mut state = CatalogState {
            version: 0,
            namespace: Uuid::new_v4(),
            next_oid: 100_000,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            databases: BTreeMap::new(),
            grants: BTreeMap::new(),
            datashares: BTreeMap::new(),
        };
        let oid = state.allocate_oid();
        state.users.insert(
            SUPERUSER.to_string(),
            User {
                oid,
                superuser: true,
                create_database: true,
                password: admin_password,
            },
        );
        state
            .create_database(DEFAULT_DATABASE, SUPERUSER)
            .expect("a fresh catalog has no databases");
        state
    }

    pub fn allocate_oid(&mut self) -> u32 {
        let oid = self.next_oid;
        self.next_oid += 1;
        oid
    }

    pub fn database(&self, name: &str) -> Result<&Database> {
        self.databases.get(name).ok_or_else(|| Error::NotFound {
            kind: "database",
            name: name.to_string(),
        })
    }

    pub fn schema(&self, database: &str, schema: &str) -> Result<&Schema> {
        self.database(database)?
            .schemas
            .get(schema)
            .ok_or_else(|| Error::NotFound {
                kind: "schema",
                name: schema.to_string(),
            })
    }

    pub fn schema_mut(&mut self, database: &str, schema: &str) -> Result<&mut Schema> {
        self.databases
            .get_mut(database)
            .ok_or_else(|| Error::NotFound {
                kind: "database",
                name: database.to_string(),
            })?
            .schemas
            .get_mut(schema)
            .ok_or_else(|| Error::NotFound {
                kind: "schema",
                name: schema.to_string(),
            })
    }

    /// A relation's owner.
    pub fn relation_owner(relation: &Relation) -> &str {
        match relation {
            Relation::Table(t) => &t.owner,
            Relation::View(v) => &v.owner,
        }
    }

    pub fn relation(&self, database: &str, schema: &str, name: &str) -> Option<&Relation> {
        self.databases
            .get(database)?
            .schemas
            .get(schema)?
            .relations
            .get(name)
    }

    pub fn table(&self, database: &str, schema: &str, name: &str) -> Result<&Table> {
        match self.relation(database, schema, name) {
            Some(Relation::Table(table)) => Ok(table),
            Some(Relation::View(_)) => {
                Err(Error::Invalid(format!("\"{name}\" is a view, not a table")))
            }
            None => Err(Error::NotFound {
                kind: "relation",
                name: format!("{schema}.{name}"),
            }),
        }
    }

    pub fn table_mut(&mut self, database: &str, schema: &str, name: &str) -> Result<&mut Table> {
        match self.schema_mut(database, schema)?.relations.get_mut(name) {
            Some(Relation::Table(table)) => Ok(table),
            Some(Relation::View(_)) => {
                Err(Error::Invalid(format!("\"{name}\" is a view, not a table")))
            }
            None => Err(Error::NotFound {
                kind: "relation",
                name: format!("{schema}.{name}"),
            }),
        }
    }

    pub fn create_database(&mut self, name: &str, owner: &str) -> Result<()> {
        if self.databases.contains_key(name) {
            return Err(Error::AlreadyExists {
                kind: "database",
                name: name.to_string(),
            });
        }
        let oid = self.allocate_oid();
        let schema_oid = self.allocate_oid();
        // As in Redshift: everyone may use and create in `public`, and make temporary tables.
        self.grants.insert(
            schema_oid,
            BTreeMap::from([(
                Grantee::Public,
                BTreeSet::from([Privilege::Usage, Privilege::Create]),
            )]),
        );
        self.grants.insert(
            oid,
            BTreeMap::from([(Grantee::Public, BTreeSet::from([Privilege::Temp]))]),
        );
        let mut schemas = BTreeMap::new();
        schemas.insert(
            DEFAULT_SCHEMA.to_string(),
            Schema {
                oid: schema_oid,
                owner: owner.to_string(),
                relations: BTreeMap::new(),
                external: None,
                procedures: BTreeMap::new(),
            },
        );
        self.databases.insert(
            name.to_string(),
            Database {
                oid,
                owner: owner.to_string(),
                schemas,
                share: None,
            },
        );
        Ok(())
    }

    pub fn create_schema(&mut self, database: &str, name: &str, owner: &str) -> Result<()> {
        let oid = self.allocate_oid();
        let db = self
            .databases
            .get_mut(database)
            .ok_or_else(|| Error::NotFound {
                kind: "database",
                name: database.to_string(),
            })?;
        if db.schemas.contains_key(name) {
            return Err(Error::AlreadyExists {
                kind: "schema",
                name: name.to_string(),
            });
        }
        db.schemas.insert(
            name.to_string(),
            Schema {
                oid,
                owner: owner.to_string(),
                relations: BTreeMap::new(),
                external: None,
                procedures: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Adds a relation; fails if the name is taken by a table or a view.
    pub fn insert_relation(
        &mut self,
        database: &str,
        schema: &str,
        name: &str,
        relation: Relation,
    ) -> Result<()> {
        let target = self.schema_mut(database, schema)?;
        if target.relations.contains_key(name) {
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: name.to_string(),
            });
        }
        target.relations.insert(name.to_string(), relation);
        Ok(())
    }

    pub fn is_superuser(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.superuser)
    }

    /// True if `user` holds `privilege` on the object `oid` owned by `owner`: as a superuser,
    /// as the owner, or through a grant to the user, one of its groups or PUBLIC.
    pub fn holds(&self, user: &str, oid: u32, owner: &str, privilege: Privilege) -> bool {
        if user == owner || self.is_superuser(user) {
            return true;
        }
        let Some(grants) = self.grants.get(&oid) else {
            return false;
        };
        grants.iter().any(|(grantee, privileges)| {
            privileges.contains(&privilege)
                && match grantee {
                    Grantee::Public => true,
                    Grantee::User(name) => name == user,
                    Grantee::Group(name) => self
                        .groups
                        .get(name)
                        .is_some_and(|g| g.members.contains(user)),
                }
        })
    }

    /// Adds `privileges` on `oid` for `grantee`.
    pub fn grant(&mut self, oid: u32, grantee: &Grantee, privileges: &[Privilege]) {
        self.grants
            .entry(oid)
            .or_default()
            .entry(grantee.clone())
            .or_default()
            .extend(privileges.iter().copied());
    }

    /// Removes `privileges` on `oid` from `grantee`.
    pub fn revoke(&mut self, oid: u32, grantee: &Grantee, privileges: &[Privilege]) {
        let Some(grants) = self.grants.get_mut(&oid) else {
            return;
        };
        if let Some(held) = grants.get_mut(grantee) {
            for privilege in privileges {
                held.remove(privilege);
            }
            if held.is_empty() {
                grants.remove(grantee);
            }
        }
        if grants.is_empty() {
            self.grants.remove(&oid);
        }
    }

    /// Forgets every privilege of `grantee` (a dropped user or group).
    pub fn revoke_all_from(&mut self, grantee: &Grantee) {
        for grants in self.grants.values_mut() {
            grants.remove(grantee);
        }
        self.grants.retain(|_, grants| !grants.is_empty());
    }

    /// The objects `user` owns, described (`table "s.t"`), for refusing DROP USER.
    pub fn owned_by(&self, user: &str) -> Vec<String> {
        let mut owned = Vec::new();
        for (db_name, db) in &self.databases {
            if db.owner == user {
                owned.push(format!("database \"{db_name}\""));
            }
            for (schema_name, schema) in &db.schemas {
                if schema.owner == user {
                    owned.push(format!("schema \"{schema_name}\""));
                }
                for (name, relation) in &schema.relations {
                    let owner = match relation {
                        Relation::Table(t) => &t.owner,
                        Relation::View(v) => &v.owner,
                    };
                    if owner == user {
                        owned.push(format!("relation \"{schema_name}.{name}\""));
                    }
                }
                for procedure in schema.procedures.values() {
                    if procedure.owner == user {
                        owned.push(format!("procedure \"{schema_name}.{}\"", procedure.name));
                    }
                }
            }
        }
        for (name, share) in &self.datashares {
            if share.owner == user {
                owned.push(format!("datashare \"{name}\""));
            }
        }
        owned
    }

    /// Every Delta table path in the catalog with its pinned version (used by recovery and
    /// maintenance), mirrors' key tables included.
    pub fn table_pins(&self) -> Vec<(String, u64)> {
        self.databases
            .values()
            .flat_map(|db| db.schemas.values())
            .flat_map(|schema| schema.relations.values())
            .flat_map(|relation| match relation {
                Relation::Table(table) => table.storage_pins(),
                Relation::View(_) => Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_dev_public_and_admin() {
        let state = CatalogState::bootstrap(None);
        assert!(state.schema(DEFAULT_DATABASE, DEFAULT_SCHEMA).is_ok());
        assert!(state.users[SUPERUSER].superuser);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut state = CatalogState::bootstrap(None);
        let err = state.create_database("dev", "admin").unwrap_err();
        assert_eq!(err.to_string(), "database \"dev\" already exists");
        state.create_schema("dev", "s", "admin").unwrap();
        let err = state.create_schema("dev", "s", "admin").unwrap_err();
        assert_eq!(err.to_string(), "schema \"s\" already exists");
    }
}
