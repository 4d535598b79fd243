//! The resources `sluice dev` and a first `sluice server` start create, with Boundary's
//! generated ids.

use jiff::Timestamp;

use crate::controller::*;
use crate::model::*;
use crate::store::{Table, Write};
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

/// The values `sluice dev` generates (Boundary's fixed dev ids).
#[derive(Debug, Clone)]
pub struct DevSeed {
    pub login_name: String,
    pub password: String,
    pub unprivileged_login_name: String,
    pub unprivileged_password: String,
    pub host_address: String,
    pub target_default_port: u16,
    pub target_session_max_seconds: u32,
    pub target_session_connection_limit: i32,
}

impl Default for DevSeed {
    fn default() -> Self {
        Self {
            login_name: "admin".into(),
            password: "password".into(),
            unprivileged_login_name: "user".into(),
            unprivileged_password: "password".into(),
            host_address: "localhost".into(),
            target_default_port: 22,
            target_session_max_seconds: 28_800,
            target_session_connection_limit: -1,
        }
    }
}

/// Fixed ids of the dev resources.
pub mod dev_ids {
    pub const AUTH_METHOD: &str = "ampw_1234567890";
    pub const ADMIN_ACCOUNT: &str = "acctpw_1234567890";
    pub const USER_ACCOUNT: &str = "acctpw_0987654321";
    pub const ADMIN_USER: &str = "u_1234567890";
    pub const USER: &str = "u_0987654321";
    pub const ORG: &str = "o_1234567890";
    pub const PROJECT: &str = "p_1234567890";
    pub const HOST_CATALOG: &str = "hcst_1234567890";
    pub const HOST: &str = "hst_1234567890";
    pub const HOST_SET: &str = "hsst_1234567890";
    pub const TARGET: &str = "ttcp_1234567890";
    pub const TARGET_DIRECT: &str = "ttcp_0987654321";
}

pub(crate) fn seed_dev(state: &mut State, seed: &DevSeed, now: Timestamp) -> Vec<Write> {
    use dev_ids::*;
    let mut writes = Vec::new();
    let mut put =
        |id: &str, v: Vec<u8>| writes.push(Write::Put(Table::Resources, id.to_owned(), v));
    let org = Scope {
        id: ORG.into(),
        kind: "org".into(),
        name: "Generated org scope".into(),
        description: "Provides an initial org scope in Sluice".into(),
        parent_scope_id: "global".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let project = Scope {
        id: PROJECT.into(),
        kind: "project".into(),
        name: "Generated project scope".into(),
        description: "Provides an initial project scope in Sluice".into(),
        parent_scope_id: ORG.into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    for s in [org, project] {
        put(&s.id, enc(&s));
        state.scopes.insert(s.id.clone(), s);
    }
    let people = [
        (
            ADMIN_USER,
            ADMIN_ACCOUNT,
            &seed.login_name,
            &seed.password,
            true,
        ),
        (
            USER,
            USER_ACCOUNT,
            &seed.unprivileged_login_name,
            &seed.unprivileged_password,
            false,
        ),
    ];
    for (user_id, account_id, login, password, admin) in people {
        let user = User {
            id: user_id.into(),
            scope_id: "global".into(),
            name: login.clone(),
            admin,
            description: String::new(),
            project_ids: vec![],
            version: 1,
        };
        // Keep the stored hash when the password is unchanged: hashing is deliberately slow.
        let keep = state.accounts.get(account_id).filter(|a| {
            a.login_name == *login
                && PasswordHash::new(&a.password_hash)
                    .map(|h| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
        });
        let account = match keep {
            Some(a) => a.clone(),
            None => Account {
                id: account_id.into(),
                auth_method_id: AUTH_METHOD.into(),
                login_name: login.clone(),
                password_hash: hash_password(password),
                user_id: user_id.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            },
        };
        put(&user.id, enc(&user));
        put(&account.id, enc(&account));
        state.users.insert(user.id.clone(), user);
        state.accounts.insert(account.id.clone(), account);
    }
    let catalog = HostCatalog {
        id: HOST_CATALOG.into(),
        scope_id: PROJECT.into(),
        name: "Generated host catalog".into(),
        description: "Provides an initial host catalog in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let host = Host {
        id: HOST.into(),
        catalog_id: HOST_CATALOG.into(),
        address: seed.host_address.clone(),
        name: "Generated host".into(),
        description: "Provides an initial host in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let set = HostSet {
        id: HOST_SET.into(),
        catalog_id: HOST_CATALOG.into(),
        host_ids: vec![HOST.into()],
        name: "Generated host set".into(),
        description: "Provides an initial host set in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    put(&catalog.id, enc(&catalog));
    put(&host.id, enc(&host));
    put(&set.id, enc(&set));
    state.catalogs.insert(catalog.id.clone(), catalog);
    state.hosts.insert(host.id.clone(), host);
    state.host_sets.insert(set.id.clone(), set);
    let target = |id: &str, name: &str, address: Option<String>, sources: Vec<String>| Target {
        id: id.into(),
        scope_id: PROJECT.into(),
        name: name.into(),
        description: String::new(),
        address,
        host_source_ids: sources,
        default_port: seed.target_default_port,
        default_client_port: 0,
        session_max_seconds: seed.target_session_max_seconds,
        session_connection_limit: seed.target_session_connection_limit,
        egress_worker_filter: None,
        version: 1,
        created_time: now,
        updated_time: now,
    };
    for t in [
        target(
            TARGET,
            "Generated target with a host source",
            None,
            vec![HOST_SET.into()],
        ),
        target(
            TARGET_DIRECT,
            "Generated target with a direct address",
            Some(seed.host_address.clone()),
            vec![],
        ),
    ] {
        let t = match state.targets.get(&t.id) {
            Some(old) => Target {
                created_time: old.created_time,
                version: old.version,
                egress_worker_filter: old.egress_worker_filter.clone(),
                ..t
            },
            None => t,
        };
        put(&t.id, enc(&t));
        state.targets.insert(t.id.clone(), t);
    }
    writes
}
