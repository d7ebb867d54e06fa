//! Fresh PostgreSQL databases for tests.
//!
//! The server is `TELEPOUND_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a superuser with trust
//! auth on the developer machines). When it cannot be reached, tests that
//! need it print that they were skipped and pass, unless
//! `TELEPOUND_REQUIRE_POSTGRES=1` (set by CI), in which case they fail.

use sqlx::{Connection, Executor, PgConnection};

/// Default admin URL.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL for tests.
pub fn admin_url() -> String {
    std::env::var("TELEPOUND_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn required() -> bool {
    std::env::var("TELEPOUND_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database created for one test and dropped afterwards.
pub struct PgDb {
    /// URL of the new database (as the admin user).
    pub url: String,
    /// Its name.
    pub name: String,
    admin: String,
    roles: Vec<String>,
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Replaces the database name (the path) of a postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_end..].find('/') {
        Some(i) => &base[..host_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Replaces the user (and drops any password) of a postgres URL.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{}{user}:{password}@{host}", &url[..scheme_end])
}

impl PgDb {
    /// Creates a fresh database, or returns `None` (after saying so) when
    /// PostgreSQL is unreachable and not required.
    ///
    /// # Panics
    /// When PostgreSQL is required but unreachable, or a statement fails.
    pub async fn create() -> Option<PgDb> {
        let admin = admin_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                if required() {
                    panic!(
                        "PostgreSQL is required (TELEPOUND_REQUIRE_POSTGRES=1) but {admin} is unreachable: {e}"
                    );
                }
                eprintln!(
                    "skipped: PostgreSQL not reachable at {admin} ({e}); set TELEPOUND_REQUIRE_POSTGRES=1 to make this a failure"
                );
                return None;
            }
        };
        let name = format!("telepound_test_{}", random_suffix());
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        conn.close().await.ok();
        Some(PgDb {
            url: with_database(&admin, &name),
            name,
            admin,
            roles: Vec::new(),
        })
    }

    /// Creates a login role with `password` and returns its name; dropped
    /// with the database.
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn create_role(&mut self, prefix: &str, password: &str) -> String {
        let role = format!("{prefix}_{}", random_suffix());
        let mut conn = PgConnection::connect(&self.admin)
            .await
            .expect("admin connection");
        // Role names are generated here from [a-z0-9_]; the password is a
        // test constant. DDL cannot take bound parameters.
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'"
        )))
        .await
        .expect("create role");
        conn.close().await.ok();
        self.roles.push(role.clone());
        role
    }

    /// Runs SQL as the admin in this database.
    ///
    /// # Panics
    /// When it fails.
    pub async fn admin_exec(&self, sql: &str) {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .expect("admin connection");
        conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.ok();
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name, roles) = (self.admin.clone(), self.name.clone(), self.roles.clone());
        // Drop runs outside async context guarantees; use a private runtime
        // on a plain thread so it works from any test.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    for r in roles {
                        let _ = c
                            .execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {r}")))
                            .await;
                    }
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rewriting() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_user("postgres://postgres@h:1/db", "app", "pw"),
            "postgres://app:pw@h:1/db"
        );
    }
}
