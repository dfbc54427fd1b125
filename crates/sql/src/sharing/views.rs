//! The datashare system views.

use arrow::array::RecordBatch;
use tributary_catalog::{CatalogState, Datashare, Privilege, Relation, SharedDatabase};
use tributary_engine::catalog_list::SessionCatalogs;

use crate::Result;

/// `svv_datashares`, `svv_datashare_objects` and `svv_datashare_consumers`: outbound shares
/// of this namespace, and inbound ones (databases made from shares). As in Redshift, a user
/// who is not a superuser sees its own: the outbound shares it owns, and the inbound ones
/// whose database it may use.
pub(crate) fn system_view(
    catalogs: &SessionCatalogs,
    state: &CatalogState,
    name: &str,
) -> Result<Option<RecordBatch>> {
    use tributary_streaming::views::Columns;
    let user = catalogs.user();
    let namespace = state.namespace.to_string();
    let outbound: Vec<(&String, &Datashare)> = state
        .datashares
        .iter()
        .filter(|(_, share)| share.owner == user || state.is_superuser(&user))
        .collect();
    let inbound: Vec<(&String, &SharedDatabase)> = state
        .databases
        .iter()
        .filter(|(_, d)| state.holds(&user, d.oid, &d.owner, Privilege::Usage))
        .filter_map(|(db, d)| d.share.as_ref().map(|s| (db, s)))
        .collect();
    let batch = match name {
        "svv_datashares" => {
            let mut rows: Vec<[Option<String>; 6]> = Vec::new();
            let mut flags: Vec<bool> = Vec::new();
            for (share_name, share) in &outbound {
                rows.push([
                    Some(share_name.to_string()),
                    Some(share.oid.to_string()),
                    Some(share.owner.clone()),
                    Some("OUTBOUND".into()),
                    Some(namespace.clone()),
                    None,
                ]);
                flags.push(share.publicly_accessible);
            }
            for (database, shared) in &inbound {
                rows.push([
                    Some(shared.datashare.clone()),
                    None,
                    None,
                    Some("INBOUND".into()),
                    Some(shared.namespace.to_string()),
                    Some(database.to_string()),
                ]);
                flags.push(false);
            }
            let column = |i: usize| rows.iter().map(move |r| r[i].clone());
            Columns::new()
                .text("share_name", column(0))
                .text("share_id", column(1))
                .text("share_owner", column(2))
                .text("share_type", column(3))
                .text("producer_namespace", column(4))
                .text("consumer_database", column(5))
                .boolean("is_publicaccessible", flags.iter().map(|f| Some(*f)))
                .finish()?
        }
        "svv_datashare_objects" => {
            let mut rows: Vec<[String; 5]> = Vec::new();
            for (share_name, share) in &outbound {
                for schema in &share.schemas {
                    rows.push([
                        "OUTBOUND".into(),
                        share_name.to_string(),
                        "schema".into(),
                        schema.clone(),
                        if share.include_new.contains(schema) {
                            "true"
                        } else {
                            "false"
                        }
                        .into(),
                    ]);
                }
                for (schema, relation) in &share.relations {
                    let kind = match state.relation(&share.database, schema, relation) {
                        Some(Relation::View(_)) => "view",
                        _ => "table",
                    };
                    rows.push([
                        "OUTBOUND".into(),
                        share_name.to_string(),
                        kind.into(),
                        format!("{schema}.{relation}"),
                        String::new(),
                    ]);
                }
            }
            for (database, shared) in &inbound {
                if let Some((_, producer_state)) = catalogs.pinned_producer(&shared.namespace)
                    && let Some(share) = producer_state.datashares.get(&shared.datashare)
                {
                    for schema in &share.schemas {
                        rows.push([
                            "INBOUND".into(),
                            shared.datashare.clone(),
                            "schema".into(),
                            format!("{database}.{schema}"),
                            String::new(),
                        ]);
                    }
                }
            }
            let column = |i: usize| rows.iter().map(move |r| Some(r[i].clone()));
            Columns::new()
                .text("share_type", column(0))
                .text("share_name", column(1))
                .text("object_type", column(2))
                .text("object_name", column(3))
                .text("include_new", column(4))
                .finish()?
        }
        "svv_datashare_consumers" => {
            let rows: Vec<(String, String)> = outbound
                .iter()
                .flat_map(|(share_name, share)| {
                    share
                        .consumers
                        .iter()
                        .map(move |c| (share_name.to_string(), c.to_string()))
                })
                .collect();
            Columns::new()
                .text("share_name", rows.iter().map(|r| Some(r.0.clone())))
                .text("consumer_namespace", rows.iter().map(|r| Some(r.1.clone())))
                .finish()?
        }
        _ => return Ok(None),
    };
    Ok(Some(batch))
}

/// The system views this module serves.
pub(crate) const VIEWS: &[&str] = &[
    "svv_datashares",
    "svv_datashare_objects",
    "svv_datashare_consumers",
];
