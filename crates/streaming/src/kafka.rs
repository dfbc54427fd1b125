//! The librdkafka client properties of a Kafka or MSK external schema.

use std::collections::BTreeMap;

use tributary_catalog::ExternalSource;

use crate::{Error, Result};

/// The librdkafka client properties of a Kafka external schema, or why it cannot be read
/// from here.
pub fn kafka_properties(external: &ExternalSource) -> Result<BTreeMap<String, String>> {
    let ExternalSource::Kafka {
        flavor,
        uri,
        cluster_arn,
        authentication,
        options,
        ..
    } = external
    else {
        return Err(Error::Internal("not a Kafka source".into()));
    };
    let refuse = |what: &str| Err(Error::NotSupported(what.to_string()));
    let Some(uri) = uri else {
        return match cluster_arn {
            Some(_) => refuse(
                "FROM MSK ... CLUSTER_ARN needs the MSK API to find the brokers, which this server does not call; give their addresses with URI 'host:port,...'",
            ),
            None => Err(Error::Syntax(format!(
                "CREATE EXTERNAL SCHEMA ... FROM {flavor} needs URI 'host:port,...'"
            ))),
        };
    };
    let mut properties = BTreeMap::new();
    properties.insert("bootstrap.servers".to_string(), uri.clone());
    let mut tls = false;
    for (option, property) in [
        ("ssl_ca_location", "ssl.ca.location"),
        ("ssl_certificate_location", "ssl.certificate.location"),
        ("ssl_key_location", "ssl.key.location"),
        ("ssl_key_password", "ssl.key.password"),
    ] {
        if let Some(value) = options.get(option) {
            properties.insert(property.to_string(), value.clone());
            tls = true;
        }
    }
    let protocol = match authentication.as_str() {
        "none" if tls => "ssl",
        "none" => "plaintext",
        "mtls" => {
            if options.contains_key("authentication_arn") || options.contains_key("secret_arn") {
                return refuse(
                    "AUTHENTICATION mtls with AUTHENTICATION_ARN or SECRET_ARN needs AWS Certificate Manager or Secrets Manager; give the certificate files with SSL_CERTIFICATE_LOCATION and SSL_KEY_LOCATION",
                );
            }
            if !options.contains_key("ssl_certificate_location")
                || !options.contains_key("ssl_key_location")
            {
                return Err(Error::Syntax(
                    "AUTHENTICATION mtls needs SSL_CERTIFICATE_LOCATION and SSL_KEY_LOCATION"
                        .into(),
                ));
            }
            "ssl"
        }
        "sasl" => {
            let mechanism = options
                .get("sasl_mechanism")
                .map(|m| m.to_ascii_uppercase())
                .unwrap_or_else(|| "PLAIN".into());
            if !matches!(
                mechanism.as_str(),
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
            ) {
                return Err(Error::Syntax(format!(
                    "SASL_MECHANISM must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not {mechanism}"
                )));
            }
            let (Some(user), Some(password)) =
                (options.get("sasl_username"), options.get("sasl_password"))
            else {
                return Err(Error::Syntax(
                    "AUTHENTICATION sasl needs SASL_USERNAME and SASL_PASSWORD".into(),
                ));
            };
            properties.insert("sasl.mechanism".into(), mechanism);
            properties.insert("sasl.username".into(), user.clone());
            properties.insert("sasl.password".into(), password.clone());
            if tls { "sasl_ssl" } else { "sasl_plaintext" }
        }
        "iam" => {
            return refuse(
                "AUTHENTICATION iam signs requests with AWS credentials through MSK's IAM mechanism, which this server does not implement; use none, mtls or sasl",
            );
        }
        other => {
            return Err(Error::Syntax(format!(
                "AUTHENTICATION must be none, iam, mtls or sasl, not {other}"
            )));
        }
    };
    properties.insert("security.protocol".into(), protocol.into());
    Ok(properties)
}
