//! Admin REST client: how tests and scenarios create orgs, users, groups and tokens without a UI.

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

/// A handle on Kaiwa's admin API (`/api/v1`, `Authorization: Bearer <admin key>`), plus `/metrics`.
#[derive(Clone, Debug)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Admin {
    /// The same key and HTTP client against another node (`http_base`).
    pub fn at(&self, http_base: &str) -> Admin {
        Admin {
            http: self.http.clone(),
            base: http_base.trim_end_matches('/').to_owned(),
            key: self.key.clone(),
        }
    }

    /// `http_base` like `http://127.0.0.1:8080`; `admin_key` is sent as a bearer token.
    pub fn new(http_base: &str, admin_key: &str) -> Admin {
        Admin {
            http: reqwest::Client::new(),
            base: http_base.trim_end_matches('/').to_owned(),
            key: admin_key.to_owned(),
        }
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/orgs {name, domains}` → the new org's id.
    pub async fn create_org(&self, name: &str, domains: &[&str]) -> anyhow::Result<String> {
        let v = self
            .post_created("/api/v1/orgs", json!({"name": name, "domains": domains}))
            .await?;
        string_field(&v, "id")
    }

    /// `POST /api/v1/users {name, org?}` → the new user's id.
    pub async fn create_user(&self, name: &str, org: Option<&str>) -> anyhow::Result<String> {
        let mut body = json!({ "name": name });
        if let Some(org) = org {
            body["org"] = json!(org);
        }
        self.create_user_with(body).await
    }

    /// `POST /api/v1/users` with any fields (email, phone, title, ...) → the new user's id.
    pub async fn create_user_with(&self, body: Value) -> anyhow::Result<String> {
        let v = self.post_created("/api/v1/users", body).await?;
        string_field(&v, "id")
    }

    /// `POST /api/v1/users/bulk {users: [{name, org?}]}` → the ids, in order. Load scenarios create
    /// thousands of users; one request each would dominate setup time.
    pub async fn create_users_bulk(
        &self,
        names: &[String],
        org: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let users: Vec<Value> = names
            .iter()
            .map(|n| match org {
                Some(o) => json!({"name": n, "org": o}),
                None => json!({ "name": n }),
            })
            .collect();
        let v = self
            .post_created("/api/v1/users/bulk", json!({ "users": users }))
            .await?;
        let ids = string_list(&v, "ids")?;
        if ids.len() != names.len() {
            bail!("asked for {} users, got {} ids", names.len(), ids.len());
        }
        Ok(ids)
    }

    /// `POST /api/v1/tokens {user}` → a WebSocket token for that user.
    pub async fn token(&self, user: &str) -> anyhow::Result<String> {
        let v = self
            .post_created("/api/v1/tokens", json!({ "user": user }))
            .await?;
        string_field(&v, "token")
    }

    /// `POST /api/v1/tokens/bulk {users}` → one token per user, in order.
    pub async fn tokens_bulk(&self, users: &[String]) -> anyhow::Result<Vec<String>> {
        let v = self
            .post_created("/api/v1/tokens/bulk", json!({ "users": users }))
            .await?;
        let tokens = string_list(&v, "tokens")?;
        if tokens.len() != users.len() {
            bail!("asked for {} tokens, got {}", users.len(), tokens.len());
        }
        Ok(tokens)
    }

    /// `POST /api/v1/groups {owner, name, kind, org?, members}` → the group's conv id.
    pub async fn create_group(
        &self,
        owner: &str,
        name: &str,
        kind: &str,
        org: Option<&str>,
        members: &[String],
    ) -> anyhow::Result<String> {
        let mut body = json!({"owner": owner, "name": name, "kind": kind, "members": members});
        if let Some(org) = org {
            body["org"] = json!(org);
        }
        let v = self.post_created("/api/v1/groups", body).await?;
        string_field(&v, "conv")
    }

    /// `POST /api/v1/users/{id}/state {state}` (pending, active, suspended, deleted).
    pub async fn set_user_state(&self, user: &str, state: &str) -> anyhow::Result<()> {
        let path = format!("/api/v1/users/{user}/state");
        let (status, body) = self
            .raw(
                Method::POST,
                &path,
                Some(json!({ "state": state })),
                Some(&self.key),
            )
            .await?;
        if status != 200 {
            bail!("POST {path} -> HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Any call: `key` None sends no `Authorization` header (for auth tests). A reply body that is
    /// not JSON comes back as `Value::Null`.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .context("GET /metrics")?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("GET /metrics -> HTTP {status}: {text}");
        }
        Ok(text)
    }

    async fn post_created(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, reply) = self
            .raw(Method::POST, path, Some(body), Some(&self.key))
            .await?;
        if status != 201 && status != 200 {
            bail!("POST {path} -> HTTP {status}: {reply}");
        }
        Ok(reply)
    }
}

/// A Prometheus metric summed over every node `target` names (each node's `/metrics` read
/// once), or None if one of them cannot be read or lacks it.
pub async fn sum_over_nodes(
    admin: Option<&Admin>,
    target: &crate::net::Target,
    metric: &str,
) -> Option<f64> {
    let admin = admin?;
    let mut bases: Vec<String> = target
        .urls
        .iter()
        .map(|u| crate::net::http_base(u))
        .collect();
    bases.sort();
    bases.dedup();
    let mut total = 0.0;
    for base in bases {
        let metrics = admin.at(&base).metrics_text().await.ok()?;
        total += metric_value(&metrics, metric)?;
    }
    Some(total)
}

/// Reads one sample of a Prometheus metric (the first line whose name matches exactly).
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (metric, value) = l.rsplit_once(' ')?;
            let metric_name = metric.split('{').next()?.trim();
            (metric_name == name).then(|| value.trim().parse().ok())?
        })
}

fn string_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("reply has no string `{field}`: {v}"))
}

fn string_list(v: &Value, field: &str) -> anyhow::Result<Vec<String>> {
    v.get(field)
        .and_then(Value::as_array)
        .with_context(|| format!("reply has no list `{field}`: {v}"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .with_context(|| format!("`{field}` holds a non-string: {x}"))
        })
        .collect()
}
