//! Boundary's table layouts and time formats.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;

/// Lines `indent` spaces in, each value starting `width` columns after the indent.
pub fn block(indent: usize, width: usize, rows: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in rows {
        let key = format!("{k}:");
        out.push_str(&format!("{:indent$}{key:<width$}{v}\n", ""));
    }
    out
}

fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// `Wed, 30 Sep 2020 15:18:14 MST` in the local time zone (Go's RFC 1123).
pub fn rfc1123(v: &Value) -> String {
    ts(v).map_or_else(String::new, |t| {
        t.to_zoned(TimeZone::system())
            .strftime("%a, %d %b %Y %H:%M:%S %Z")
            .to_string()
    })
}

/// `2020-09-30T15:18:14-07:00` in the local time zone.
pub fn rfc3339(v: &Value) -> String {
    ts(v).map_or_else(String::new, |t| {
        t.to_zoned(TimeZone::system())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `sessions list`: the seed's "Session information:" blocks.
pub fn session_list(items: &[Value]) -> String {
    if items.is_empty() {
        return "No sessions found\n".into();
    }
    let mut out = String::from("\nSession information:\n");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&block(4, 20, &[("ID", s(&it["id"]))]));
        out.push_str(&block(
            8,
            18,
            &[
                ("Status", s(&it["status"])),
                ("Created Time", rfc3339(&it["created_time"])),
                ("Expiration Time", rfc3339(&it["expiration_time"])),
                ("Updated Time", rfc3339(&it["updated_time"])),
                ("User ID", s(&it["user_id"])),
                ("Target ID", s(&it["target_id"])),
            ],
        ));
    }
    out
}

/// `sessions read` / `cancel`: the seed's detail view.
pub fn session_item(it: &Value) -> String {
    let mut rows = vec![
        ("Auth Token ID", s(&it["auth_token_id"])),
        ("Created Time", rfc1123(&it["created_time"])),
        ("Endpoint", s(&it["endpoint"])),
        ("Expiration Time", rfc3339(&it["expiration_time"])),
    ];
    if !s(&it["host_id"]).is_empty() {
        rows.push(("Host ID", s(&it["host_id"])));
    }
    if !s(&it["host_set_id"]).is_empty() {
        rows.push(("Host Set ID", s(&it["host_set_id"])));
    }
    rows.push(("ID", s(&it["id"])));
    rows.push(("Status", s(&it["status"])));
    rows.push(("Target ID", s(&it["target_id"])));
    if let Some(r) = it["termination_reason"].as_str() {
        rows.push(("Termination Reason", r.to_owned()));
    }
    rows.push(("Type", s(&it["type"])));
    rows.push(("Updated Time", rfc3339(&it["updated_time"])));
    rows.push(("User ID", s(&it["user_id"])));
    rows.push(("Version", s(&it["version"])));
    let mut out = String::from("\nSession information:\n");
    out.push_str(&block(4, 21, &rows));
    let sc = &it["scope"];
    out.push_str("\n    Scope:\n");
    out.push_str(&block(
        8,
        19,
        &[
            ("ID", s(&sc["id"])),
            ("Name", s(&sc["name"])),
            ("Parent Scope ID", s(&sc["parent_scope_id"])),
            ("Type", s(&sc["type"])),
        ],
    ));
    if let Some(states) = it["states"].as_array() {
        out.push_str("\n    States:\n");
        for (i, st) in states.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut rows = Vec::new();
            if !st["end_time"].is_null() {
                rows.push(("End Time", rfc1123(&st["end_time"])));
            }
            rows.push(("Start Time", rfc1123(&st["start_time"])));
            rows.push(("Status", s(&st["status"])));
            out.push_str(&block(8, 19, &rows));
        }
    }
    if let Some(conns) = it["connections"].as_array().filter(|c| !c.is_empty()) {
        out.push_str("\n    Connections:\n");
        for (i, c) in conns.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut rows = vec![
                ("Bytes Down", s(&c["bytes_down"])),
                ("Bytes Up", s(&c["bytes_up"])),
                ("Client Address", s(&c["client_tcp_address"])),
            ];
            if let Some(r) = c["closed_reason"].as_str() {
                rows.push(("Closed Reason", r.to_owned()));
            }
            rows.push(("Endpoint Address", s(&c["endpoint_tcp_address"])));
            rows.push(("Status", s(&c["status"])));
            out.push_str(&block(8, 19, &rows));
        }
    }
    out
}

/// `targets authorize-session`.
pub fn authorization(it: &Value) -> String {
    let mut out = String::from("\nTarget information:\n");
    let mut rows = vec![
        ("Authorization Token", s(&it["authorization_token"])),
        ("Created Time", rfc3339(&it["created_time"])),
    ];
    if !s(&it["host_id"]).is_empty() {
        rows.push(("Host ID", s(&it["host_id"])));
    }
    rows.extend([
        ("Scope ID", s(&it["scope"]["id"])),
        ("Session ID", s(&it["session_id"])),
        ("Target ID", s(&it["target_id"])),
        ("Type", s(&it["type"])),
        ("User ID", s(&it["user_id"])),
    ]);
    out.push_str(&block(4, 23, &rows));
    out
}

/// `targets read`, and one block of `targets list`.
pub fn target(it: &Value) -> String {
    let mut rows = vec![
        ("ID", s(&it["id"])),
        ("Name", s(&it["name"])),
        ("Type", s(&it["type"])),
        ("Scope ID", s(&it["scope_id"])),
        ("Version", s(&it["version"])),
        ("Default Port", s(&it["attributes"]["default_port"])),
        ("Session Max Seconds", s(&it["session_max_seconds"])),
        (
            "Session Connection Limit",
            s(&it["session_connection_limit"]),
        ),
    ];
    if let Some(a) = it["address"].as_str() {
        rows.push(("Address", a.to_owned()));
    }
    if let Some(h) = it["host_source_ids"].as_array().filter(|h| !h.is_empty()) {
        let ids: Vec<String> = h.iter().map(s).collect();
        rows.push(("Host Sources", ids.join(", ")));
    }
    if let Some(f) = it["egress_worker_filter"].as_str() {
        rows.push(("Egress Worker Filter", f.to_owned()));
    }
    block(4, 28, &rows)
}

/// A host catalog, host or host set (`read`, and one block of `list`).
pub fn resource(it: &Value) -> String {
    let mut rows = vec![("ID", s(&it["id"]))];
    for (label, key) in [
        ("Name", "name"),
        ("Description", "description"),
        ("Type", "type"),
        ("Scope ID", "scope_id"),
        ("Host Catalog ID", "host_catalog_id"),
        ("Version", "version"),
    ] {
        if !it[key].is_null() {
            rows.push((label, s(&it[key])));
        }
    }
    for (label, key) in [
        ("Role", "role"),
        ("User ID", "user_id"),
        ("Auth Method ID", "auth_method_id"),
        ("Account ID", "account_id"),
    ] {
        if let Some(v) = it[key].as_str().filter(|v| !v.is_empty()) {
            rows.push((label, v.to_owned()));
        }
    }
    if let Some(a) = it["attributes"]["address"].as_str() {
        rows.push(("Address", a.to_owned()));
    }
    if let Some(a) = it["attributes"]["login_name"].as_str() {
        rows.push(("Login Name", a.to_owned()));
    }
    if let Some(h) = it["project_ids"].as_array().filter(|h| !h.is_empty()) {
        let ids: Vec<String> = h.iter().map(s).collect();
        rows.push(("Project IDs", ids.join(", ")));
    }
    if let Some(h) = it["account_ids"].as_array() {
        let ids: Vec<String> = h.iter().map(s).collect();
        rows.push(("Account IDs", ids.join(", ")));
    }
    if let Some(h) = it["host_ids"].as_array() {
        let ids: Vec<String> = h.iter().map(s).collect();
        rows.push(("Host IDs", ids.join(", ")));
    }
    if !it["created_time"].is_null() {
        rows.push(("Created Time", rfc1123(&it["created_time"])));
        rows.push(("Updated Time", rfc1123(&it["updated_time"])));
    }
    if !it["expiration_time"].is_null() {
        rows.push(("Expiration Time", rfc1123(&it["expiration_time"])));
    }
    block(4, 20, &rows)
}

/// `workers read`, and one block of `workers list`.
pub fn worker(it: &Value) -> String {
    let tags = it["config_tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let vals: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
                    format!("{k}={}", vals.join(","))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let mut rows = vec![
        ("ID", s(&it["id"])),
        ("Name", s(&it["name"])),
        ("Type", s(&it["type"])),
        ("Version", s(&it["version"])),
        ("Address", s(&it["address"])),
        ("Tags", tags),
        ("Connected", s(&it["connected"])),
        ("Last Status Time", rfc1123(&it["last_status_time"])),
        ("Session Count", s(&it["session_count"])),
        ("Active Connection Count", s(&it["active_connection_count"])),
        ("Release Version", s(&it["release_version"])),
    ];
    if let Some(t) = it["controller_generated_activation_token"].as_str() {
        rows.push(("Controller-Generated Activation Token", t.to_owned()));
    }
    block(4, 40, &rows)
}

/// "Proxy listening information:" exactly as the seed lays it out.
pub fn proxy_listening(
    addr: &str,
    limit: i32,
    expiration: &str,
    port: u16,
    session_id: &str,
) -> String {
    let mut out = String::from("\nProxy listening information:\n");
    out.push_str(&block(
        4,
        21,
        &[
            ("Address", addr.to_owned()),
            ("Connection Limit", limit.to_string()),
            ("Expiration", expiration.to_owned()),
            ("Port", port.to_string()),
            ("Protocol", "tcp".into()),
            ("Session ID", session_id.to_owned()),
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_block_matches_the_seed_layout() {
        let out = proxy_listening(
            "127.0.0.1",
            1,
            "Wed, 30 Sep 2020 23:18:14 MST",
            61991,
            "s_h7vBIhH5SZ",
        );
        let seed = "
Proxy listening information:
    Address:             127.0.0.1
    Connection Limit:    1
    Expiration:          Wed, 30 Sep 2020 23:18:14 MST
    Port:                61991
    Protocol:            tcp
    Session ID:          s_h7vBIhH5SZ
";
        assert_eq!(out, seed);
    }

    #[test]
    fn session_blocks_match_the_seed_columns() {
        let item: Value = serde_json::json!({
            "id": "s_h7vBIhH5SZ", "status": "active", "auth_token_id": "at_51XQGx0bzk",
            "created_time": "2020-09-30T22:18:14Z", "updated_time": "2020-09-30T22:18:35Z",
            "expiration_time": "2020-10-01T06:18:14Z", "endpoint": "tcp://localhost:22",
            "host_id": "hst_1234567890", "host_set_id": "hsst_1234567890", "target_id": "ttcp_1234567890",
            "type": "tcp", "user_id": "u_1234567890", "version": 2,
            "scope": {"id": "p_1234567890", "name": "Generated project scope", "parent_scope_id": "o_1234567890", "type": "project"},
            "states": [
                {"status": "active", "start_time": "2020-09-30T22:18:35Z"},
                {"status": "pending", "start_time": "2020-09-30T22:18:14Z", "end_time": "2020-09-30T22:18:35Z"}
            ]
        });
        let read = session_item(&item);
        assert!(
            read.contains("\n    Auth Token ID:       at_51XQGx0bzk\n"),
            "{read}"
        );
        assert!(
            read.contains("\n    Host Set ID:         hsst_1234567890\n"),
            "{read}"
        );
        assert!(read.contains("\n    Version:             2\n"), "{read}");
        assert!(read.contains("\n    Scope:\n        ID:                p_1234567890\n        Name:              Generated project scope\n"), "{read}");
        assert!(
            read.contains("\n    States:\n        Start Time:        "),
            "{read}"
        );
        let active = read.find("Status:            active").unwrap();
        let pending = read.find("Status:            pending").unwrap();
        assert!(active < pending, "newest state first");
        let list = session_list(&[item]);
        assert!(
            list.contains(
                "\n    ID:                 s_h7vBIhH5SZ\n        Status:           active\n"
            ),
            "{list}"
        );
        assert!(
            list.contains("\n        Target ID:        ttcp_1234567890\n"),
            "{list}"
        );
    }
}
