//! Where a PostgreSQL password comes from when the URL has none, as libpq decides:
//! `PGPASSWORD`, then the password file (`PGPASSFILE`, else `~/.pgpass`).

use std::path::{Path, PathBuf};

/// What a password file line is matched against.
pub(crate) struct Target<'a> {
    /// A host name or address; `None` for a Unix socket (matched by `localhost`, as libpq).
    pub host: Option<&'a str>,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password for `target` and where it came from, or why none was taken from a file that
/// exists (for the error message of a failed authentication).
pub(crate) enum Found {
    Password(Vec<u8>, &'static str),
    None(Option<String>),
}

pub(crate) fn find(target: &Target) -> Found {
    if let Some(p) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Found::Password(p.into_encoded_bytes(), "PGPASSWORD");
    }
    let Some(path) = password_file() else {
        return Found::None(None);
    };
    match read_private(&path) {
        Ok(Some(text)) => match lookup(&text, target) {
            Some(p) => Found::Password(p.into_bytes(), "the password file"),
            None => Found::None(None),
        },
        Ok(None) => Found::None(None),
        Err(why) => Found::None(Some(why)),
    }
}

fn password_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".pgpass"))
}

/// The file's text; `None` when it does not exist. Like libpq, a file that others may read is
/// ignored (the error says so).
fn read_private(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("password file {} unreadable: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!("password file {} is not a file", path.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "password file {} was ignored: it has group or world access (chmod 0600 it)",
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("password file {} unreadable: {e}", path.display()))
}

/// The password of the first line of `text` that matches `target`.
/// Lines are `host:port:database:user:password`; `*` matches anything; `\:` and `\\` escape.
pub(crate) fn lookup(text: &str, target: &Target) -> Option<String> {
    let port = target.port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let host_ok = match target.host {
            Some(h) => fields[0] == "*" || fields[0] == h,
            None => fields[0] == "*" || fields[0] == "localhost",
        };
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if host_ok
            && matches(&fields[1], &port)
            && matches(&fields[2], target.database)
            && matches(&fields[3], target.user)
        {
            // A password may contain unescaped colons after the fourth separator.
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let text = "# comment\n\
                    db.example:5432:other:alice:wrong\n\
                    db.example:5432:vol:alice:s\\:ecret\\\\x\n\
                    *:*:*:bob:any:thing\n\
                    localhost:6000:*:carol:socket\n";
        let t = |host, port, database, user| Target {
            host,
            port,
            database,
            user,
        };
        assert_eq!(
            lookup(text, &t(Some("db.example"), 5432, "vol", "alice")).as_deref(),
            Some("s:ecret\\x")
        );
        assert_eq!(
            lookup(text, &t(Some("db.example"), 5433, "vol", "alice")),
            None
        );
        assert_eq!(
            lookup(text, &t(Some("h"), 1, "d", "bob")).as_deref(),
            Some("any:thing")
        );
        // A Unix socket matches "localhost".
        assert_eq!(
            lookup(text, &t(None, 6000, "x", "carol")).as_deref(),
            Some("socket")
        );
        assert_eq!(
            lookup(text, &t(Some("elsewhere"), 6000, "x", "carol")),
            None
        );
    }
}
