//! The admin API under `/api/v1`: provisioning of orgs, users, groups and tokens for operators
//! and load tools. JSON in and out; `Authorization: Bearer <admin key>` on every call.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{middleware, web, HttpRequest, HttpResponse};
use kaiwa_actors::group::GroupSpec;
use kaiwa_actors::protocol::{ErrorCode, GroupKind, Id, KResult, KaiwaError};
use kaiwa_actors::provision::{self, NewOrg, NewUser};
use kaiwa_actors::store::UserState;
use kaiwa_actors::{entity_call, rules};
use serde::Deserialize;
use serde_json::json;

use super::{error_response, AppState};

/// Most users or tokens one bulk call takes.
pub const MAX_BULK: usize = 10_000;
/// Default and longest token lifetime, in seconds.
pub const DEFAULT_TTL_S: u64 = 24 * 3600;
pub const MAX_TTL_S: u64 = 365 * 24 * 3600;

/// Mounts the admin routes; every one of them wants the admin key, checked before anything
/// else (an unauthenticated caller learns nothing, not even whether its body was well formed).
pub fn routes(cfg: &mut web::ServiceConfig) {
    let scope = web::scope("/api/v1")
        .wrap(middleware::from_fn(require_admin_key))
        .app_data(
            web::JsonConfig::default()
                .limit(8 << 20)
                .error_handler(|e, _| {
                    let resp = error_response(&KaiwaError::bad_frame(e.to_string()));
                    actix_web::error::InternalError::from_response(e, resp).into()
                }),
        )
        .route("/orgs", web::post().to(create_org))
        .route("/orgs/{id}", web::get().to(get_org))
        .route("/users", web::post().to(create_user))
        .route("/users/bulk", web::post().to(create_users_bulk))
        .route("/users/{id}", web::get().to(get_user))
        .route("/users/{id}/state", web::post().to(set_state))
        .route("/tokens", web::post().to(create_token))
        .route("/tokens/bulk", web::post().to(create_tokens_bulk))
        .route("/groups", web::post().to(create_group));
    cfg.service(scope);
}

async fn require_admin_key(
    req: ServiceRequest,
    next: middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let st = req.app_data::<web::Data<AppState>>().cloned();
    let allowed = st.is_some_and(|st| check_key(req.request(), &st).is_ok());
    if !allowed {
        let resp = error_response(&KaiwaError::new(
            ErrorCode::Unauthorized,
            "admin key required",
        ));
        return Ok(req.into_response(resp));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn check_key(req: &HttpRequest, st: &AppState) -> KResult<()> {
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match given {
        Some(k) if k.as_bytes() == st.admin_key.as_bytes() => Ok(()),
        _ => Err(KaiwaError::new(
            ErrorCode::Unauthorized,
            "admin key required",
        )),
    }
}

fn respond<T: serde::Serialize>(
    status: actix_web::http::StatusCode,
    r: KResult<T>,
) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::build(status).json(v),
        Err(e) => error_response(&e),
    }
}

const CREATED: actix_web::http::StatusCode = actix_web::http::StatusCode::CREATED;
const OK: actix_web::http::StatusCode = actix_web::http::StatusCode::OK;

async fn create_org(st: web::Data<AppState>, body: web::Json<NewOrg>) -> HttpResponse {
    let r = async { provision::create_org(&st.engine, body.into_inner()).await };
    respond(CREATED, r.await.map(|id| json!({ "id": id })))
}

async fn get_org(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let r = async {
        entity_call::get_org(&st.engine, &id)
            .await?
            .ok_or_else(|| KaiwaError::not_found("no such org"))
    };
    respond(OK, r.await)
}

async fn create_user(st: web::Data<AppState>, body: web::Json<NewUser>) -> HttpResponse {
    let r = async {
        let ids = provision::create_users(&st.engine, vec![body.into_inner()]).await?;
        Ok(json!({ "id": ids[0] }))
    };
    respond(CREATED, r.await)
}

/// Body of `POST /users/bulk`.
#[derive(Deserialize)]
struct BulkUsers {
    users: Vec<NewUser>,
}

async fn create_users_bulk(st: web::Data<AppState>, body: web::Json<BulkUsers>) -> HttpResponse {
    let r = async {
        let users = body.into_inner().users;
        if users.len() > MAX_BULK {
            return Err(KaiwaError::too_large(format!(
                "at most {MAX_BULK} users per call"
            )));
        }
        Ok(json!({ "ids": provision::create_users(&st.engine, users).await? }))
    };
    respond(CREATED, r.await)
}

async fn get_user(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let r = async {
        entity_call::get_user(&st.engine, &id)
            .await?
            .ok_or_else(|| KaiwaError::not_found("no such user"))
    };
    respond(OK, r.await)
}

/// Body of `POST /users/{id}/state`.
#[derive(Deserialize)]
struct StateBody {
    state: UserState,
}

async fn set_state(
    st: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<StateBody>,
) -> HttpResponse {
    let r = async {
        entity_call::set_user_state(&st.engine, &id, body.state).await?;
        Ok(json!({}))
    };
    respond(OK, r.await)
}

/// Body of `POST /tokens`.
#[derive(Deserialize)]
struct TokenBody {
    user: Id,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Mints a token for an existing user who may connect.
async fn token_for(st: &AppState, user: &str, ttl_s: Option<u64>) -> KResult<String> {
    let rec = st
        .engine
        .store
        .user(user)
        .await?
        .ok_or_else(|| KaiwaError::not_found(format!("no such user {user}")))?;
    rules::user_state::can_connect(rec.state)?;
    let ttl = ttl_s.unwrap_or(DEFAULT_TTL_S).clamp(1, MAX_TTL_S);
    st.auth
        .mint(user, ttl)
        .map_err(|e| KaiwaError::internal(e.to_string()))
}

async fn create_token(st: web::Data<AppState>, body: web::Json<TokenBody>) -> HttpResponse {
    let r = async { Ok(json!({ "token": token_for(&st, &body.user, body.ttl_s).await? })) };
    respond(CREATED, r.await)
}

/// Body of `POST /tokens/bulk`.
#[derive(Deserialize)]
struct BulkTokens {
    users: Vec<Id>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

async fn create_tokens_bulk(st: web::Data<AppState>, body: web::Json<BulkTokens>) -> HttpResponse {
    let r = async {
        if body.users.len() > MAX_BULK {
            return Err(KaiwaError::too_large(format!(
                "at most {MAX_BULK} tokens per call"
            )));
        }
        let mut tokens = Vec::with_capacity(body.users.len());
        for u in &body.users {
            tokens.push(token_for(&st, u, body.ttl_s).await?);
        }
        Ok(json!({ "tokens": tokens }))
    };
    respond(CREATED, r.await)
}

/// Body of `POST /groups`: a group created on an owner's behalf, with its first members.
#[derive(Deserialize)]
struct GroupBody {
    owner: Id,
    name: String,
    kind: GroupKind,
    #[serde(default)]
    org: Option<Id>,
    #[serde(default)]
    parent: Option<Id>,
    #[serde(default)]
    members: Vec<Id>,
}

async fn create_group(st: web::Data<AppState>, body: web::Json<GroupBody>) -> HttpResponse {
    let r = async {
        let b = body.into_inner();
        if b.members.len() > MAX_BULK {
            return Err(KaiwaError::too_large(format!(
                "at most {MAX_BULK} members per call"
            )));
        }
        let spec = GroupSpec {
            owner: b.owner,
            name: b.name,
            kind: b.kind,
            org: b.org,
            parent: b.parent,
            members: b.members,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        st.engine.create_group(
            spec,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let ok = rx
            .await
            .map_err(|_| KaiwaError::internal("group actor unavailable"))??;
        Ok(json!({ "conv": ok.conv }))
    };
    respond(CREATED, r.await)
}
