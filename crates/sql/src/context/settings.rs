//! SET and SHOW: a session's settings, and what DataFusion must know of them.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast::Expr;

use super::Context;
use crate::output::Output;
use crate::{Error, Result};

fn setting_value(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s)
            | datafusion::sql::sqlparser::ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

impl Context {
    /// RESET: one setting, or all of them, back to its default.
    pub(crate) fn reset(
        &mut self,
        reset: datafusion::sql::sqlparser::ast::Reset,
    ) -> Result<Output> {
        match reset {
            datafusion::sql::sqlparser::ast::Reset::ALL => self.settings.reset_all(),
            datafusion::sql::sqlparser::ast::Reset::ConfigurationParameter(name) => {
                self.settings.reset(&name.to_string())?
            }
        }
        self.apply_settings()?;
        Ok(Output::command("RESET"))
    }

    /// Sets one setting and applies it (a procedure's `SET` clause).
    pub(crate) fn set_setting(&mut self, name: &str, value: &str) -> Result<()> {
        self.settings.set(name, value)?;
        self.apply_settings()
    }

    pub(crate) fn set(&mut self, set: datafusion::sql::sqlparser::ast::Set) -> Result<Output> {
        use datafusion::sql::sqlparser::ast::Set as S;
        match set {
            S::SingleAssignment {
                variable, values, ..
            } => {
                let value = values
                    .iter()
                    .map(setting_value)
                    .collect::<Vec<_>>()
                    .join(", ");
                self.settings.set(&variable.to_string(), &value)?;
            }
            S::SetTimeZone { value, .. } => {
                self.settings.set("timezone", &setting_value(&value))?
            }
            S::SetNames { .. } | S::SetNamesDefault {} => {}
            S::SetTransaction { .. } => {}
            S::SetSessionAuthorization(_) | S::SetRole { .. } => {
                return Err(Error::NotSupported(
                    "SET SESSION AUTHORIZATION and SET ROLE are not supported yet".into(),
                ));
            }
            other => return Err(Error::NotSupported(format!("{other} is not supported"))),
        }
        self.apply_settings()?;
        Ok(Output::command("SET"))
    }

    /// Pushes settings that DataFusion needs to know into the session context.
    pub(crate) fn apply_settings(&mut self) -> Result<()> {
        let timezone = self.settings.get("timezone")?;
        let state = self.context.state_ref();
        let mut state = state.write();
        let options = state.config_mut().options_mut();
        options.execution.time_zone = Some(timezone);
        self.case_sensitive.store(
            self.settings.case_sensitive_identifiers(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    pub(crate) fn show(
        &self,
        variable: &[datafusion::sql::sqlparser::ast::Ident],
    ) -> Result<Output> {
        let name = variable
            .iter()
            .map(|i| i.value.clone())
            .collect::<Vec<_>>()
            .join(" ");
        if name.eq_ignore_ascii_case("all") {
            return self.show_all();
        }
        let value = match name.to_ascii_lowercase().as_str() {
            "session_authorization" | "session authorization" => self.user.clone(),
            _ => self.settings.get(&name)?,
        };
        let column = name.to_ascii_lowercase().replace(' ', "_");
        let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec![value]))],
        )?;
        Ok(Output::rows(schema, vec![batch]))
    }

    pub(crate) fn show_all(&self) -> Result<Output> {
        let (names, values): (Vec<String>, Vec<String>) = self
            .settings
            .all()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unzip();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::StringArray::from(names)),
                Arc::new(arrow::array::StringArray::from(values)),
            ],
        )?;
        Ok(Output::rows(schema, vec![batch]))
    }
}
