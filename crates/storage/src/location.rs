//! Where a table's files live: storage paths derived from SQL names, and the checks that keep
//! every path inside the storage root.
//!
//! A SQL name may hold any character: dots, slashes, `#`, `%`, quotes, NUL, Unicode. None of
//! them reaches a path. A new table lives at `<database>/<schema>/<table>-<id>`, where each
//! name is reduced to a slug of `[a-z0-9_]` (so the directories stay readable in a file
//! browser, and no URL, object-store key or file system reads them differently) and `<id>` is
//! random, so two tables never share a directory whatever their names, their case or their
//! history. Slugs need not be unique: the id is.
//!
//! A stored path is checked again before any file is touched ([`check_table_path`]), because
//! paths also come from catalogs this process did not write (a datashare producer's, an older
//! release's). Earlier releases joined names into a URL as they were, so a name with `#`, `?`,
//! `%`, `\` or `..` put a table somewhere else than its path said, possibly outside the root;
//! [`legacy_location`] finds where such a table really is, so that the catalog can be pointed
//! there once.

use percent_encoding::percent_decode_str;
use url::Url;

use crate::{Error, Result};

/// Bytes of a name's slug at most; a Redshift identifier has at most 127 bytes, and a path
/// segment must stay well under the 255 bytes file systems allow.
const SLUG_BYTES_MAX: usize = 64;

/// Hex digits of the random id that makes a table's directory unique.
const ID_DIGITS: usize = 12;

/// A new, unique path for a table named `name` in `database`.`schema`.
pub fn new_table_path(database: &str, schema: &str, name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}/{}/{}-{}",
        slug(database),
        slug(schema),
        slug(name),
        &id[..ID_DIGITS]
    )
}

/// A name reduced to ASCII lower-case letters, digits and `_`: every other character (case
/// folded letters apart) becomes `_`.
fn slug(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(SLUG_BYTES_MAX)
        .collect();
    if slug.is_empty() {
        slug.push('_');
    }
    slug
}

/// Checks that a stored table path names a directory strictly inside the root, and means the
/// same directory to the file system, to URLs and to object-store keys: `/`-separated
/// segments, none empty, `.` or `..`, and no control character or character that URLs or
/// object stores interpret (`\ # ? % { } [ ] ^ ~ | < > " `` *`).
pub fn check_table_path(path: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidLocation {
            location: path.to_string(),
            reason: format!("not a table path inside the storage root: {reason}"),
        })
    };
    if path.is_empty() {
        return invalid("it is empty");
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return invalid("a segment is empty, '.' or '..'");
        }
        if let Some(c) = segment.chars().find(|c| is_interpreted(*c)) {
            return invalid(&format!("it contains {c:?}"));
        }
    }
    Ok(())
}

fn is_interpreted(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '#'
                | '?'
                | '%'
                | '{'
                | '}'
                | '['
                | ']'
                | '^'
                | '~'
                | '|'
                | '<'
                | '>'
                | '"'
                | '`'
                | '*'
        )
}

/// The URL of a checked table path under `root` (which ends in `/`), each segment
/// percent-encoded so that it is read literally.
pub(crate) fn table_url(root: &Url, path: &str) -> Result<Url> {
    check_table_path(path)?;
    let mut url = root.clone();
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| Error::InvalidLocation {
                location: root.to_string(),
                reason: "the storage root cannot hold paths".to_string(),
            })?;
        segments.pop_if_empty();
        segments.extend(path.split('/'));
        // A trailing slash: the table is a directory.
        segments.push("");
    }
    Ok(url)
}

/// Where earlier releases stored a table whose stored path fails [`check_table_path`]: they
/// joined the path into the root's URL as it was, so `#` or `?` cut it, `\` separated
/// segments, `%` sequences were decoded and `..` climbed. Returns the path, relative to the
/// root, of the directory that join named, if it is inside the root and passes the check;
/// None if the table was put outside the root (the caller must not touch it).
pub fn legacy_location(root: &Url, path: &str) -> Option<String> {
    let joined = root.join(&format!("{}/", path.trim_matches('/'))).ok()?;
    if joined.scheme() != root.scheme() || joined.host_str() != root.host_str() {
        return None;
    }
    let relative = joined.path().strip_prefix(root.path())?;
    let decoded = percent_decode_str(relative.trim_end_matches('/'))
        .decode_utf8()
        .ok()?;
    check_table_path(&decoded).ok()?;
    Some(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a client may quote, each of which once escaped or collided.
    const HOSTILE: &[&str] = &[
        "../../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "a#b",
        "a#c",
        "a%2e%2e",
        "a?b",
        "it's",
        "\"q\"",
        "nul\0byte",
        "naïve 表",
        "Mixed",
        "mixed",
        "",
        " ",
        "~",
        "%",
    ];

    fn root() -> Url {
        Url::parse("file:///data/root/").unwrap()
    }

    #[test]
    fn new_paths_stay_inside_their_parent_and_never_collide() {
        let long = "é".repeat(63);
        let mut names: Vec<&str> = HOSTILE.to_vec();
        names.push(&long);
        let mut seen = std::collections::HashSet::new();
        for database in &names {
            for name in &names {
                let path = new_table_path(database, name, name);
                check_table_path(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                let segments: Vec<&str> = path.split('/').collect();
                assert_eq!(segments.len(), 3, "{path}");
                assert!(
                    segments
                        .iter()
                        .all(|s| s.len() <= SLUG_BYTES_MAX + 1 + ID_DIGITS
                            && s.bytes().all(|b| b.is_ascii_lowercase()
                                || b.is_ascii_digit()
                                || b == b'_'
                                || b == b'-')),
                    "{path}"
                );
                let url = table_url(&root(), &path).unwrap();
                assert_eq!(url.as_str(), format!("file:///data/root/{path}/"));
                assert!(seen.insert(path), "two tables share a directory");
            }
        }
    }

    #[test]
    fn paths_that_could_escape_or_be_misread_are_refused() {
        for bad in [
            "",
            "dev/../../x/t-1",
            "dev/./t",
            "dev//t",
            "/dev/t",
            "dev/a#b/t-1",
            "dev/a?b/t-1",
            "dev/a%2e%2e/t-1",
            "dev/a\\b/t-1",
            "dev/a\0b/t-1",
        ] {
            assert!(check_table_path(bad).is_err(), "{bad:?} passed");
            assert!(table_url(&root(), bad).is_err(), "{bad:?} got a URL");
        }
        // What earlier releases wrote for ordinary names stays readable where it is.
        for good in ["dev/public/orders-0123456789ab", "dev/My Schema/naïve-1"] {
            check_table_path(good).unwrap();
            let url = table_url(&root(), good).unwrap();
            assert_eq!(
                url.to_file_path().unwrap(),
                std::path::Path::new("/data/root").join(good)
            );
        }
    }

    #[test]
    fn legacy_locations_are_where_the_old_url_join_put_them() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(
                legacy_location(&root(), path).as_deref(),
                expected,
                "{path}"
            );
        };
        check("dev/a#b/t-1", Some("dev/a"));
        check("dev/a?b/t-1", Some("dev/a"));
        check("dev/a\\b/t-1", Some("dev/a/b/t-1"));
        check("dev/x/../t-1", Some("dev/t-1"));
        check("dev/../../x/t-1", None);
        check("../t-1", None);
        let s3 = Url::parse("s3://bucket/prefix/").unwrap();
        assert_eq!(
            legacy_location(&s3, "dev/a#b/t-1").as_deref(),
            Some("dev/a")
        );
        assert_eq!(legacy_location(&s3, "dev/../../t-1"), None);
    }
}
