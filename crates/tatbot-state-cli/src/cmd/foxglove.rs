//! `tatbot-state foxglove [--bind 127.0.0.1:8765]`: the live state in Foxglove.
//!
//! Serves the Foxglove WebSocket protocol with the `foxglove` SDK's own server: one channel per
//! recording topic ([`Topic`]), JSON with the same JSON Schemas as `record` writes, fed live by
//! the library's [`Recorder`] (from now on: the stored backlog is for `record`). The parameters
//! (docs/PARAMS.md) are Foxglove parameters: a client reads them all, and a set goes through
//! [`Params::set`] with this process's Redis user, so it is refused when that role may not
//! write (the viewer) or the parameter is read-only; the answer then carries the unchanged
//! values. Changes made anywhere reach subscribed clients through the audit log.
//!
//! `config/foxglove/tatbot-layout.json` is a layout for these channels (docs/OPERATIONS.md).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use foxglove::websocket::ParameterValue as FoxValue;
use foxglove::websocket::{AnyClient, GetParametersResponder, Parameter, ParameterHandler, SetParametersResponder};
use foxglove::{ChannelBuilder, Context, PartialMetadata, RawChannel, Schema, WebSocketServer, WebSocketServerHandle};
use tatbot_state::params::Prefix;
use tatbot_state::record::{ParamRecord, Recorder, Selection, Topic};
use tatbot_state::{ParamName, ParamValue, Params};

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::signal::shutdown_signal;

/// Flags of `foxglove`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve the Foxglove WebSocket protocol on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "HOST:PORT")]
    pub bind: SocketAddr,
}

/// Runs `foxglove`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let mut recorder = Recorder::new(&manager, Selection::All).await?;
    recorder.skip_backlog().await?;

    // A context of our own rather than the SDK's global one: only our channels, only our server.
    let context = Context::new();
    let mut channels = Vec::with_capacity(Topic::ALL.len());
    for topic in Topic::ALL {
        let schema = Schema::new(topic.schema_name(), "jsonschema", topic.json_schema().into_bytes());
        let channel = ChannelBuilder::new(topic.name())
            .schema(schema)
            .message_encoding("json")
            .context(&context)
            .build_raw()
            .with_context(|| format!("creating the Foxglove channel {}", topic.name()))?;
        channels.push(channel);
    }
    let server_handle = Arc::new(OnceLock::new());
    let handler = Arc::new(ParamHandler {
        params: manager.params(),
        server: Arc::clone(&server_handle),
    });
    let server = WebSocketServer::new()
        .name("tatbot-state")
        .bind(args.bind.ip().to_string(), args.bind.port())
        .context(&context)
        .parameter_handler(handler)
        .start()
        .await
        .with_context(|| format!("serving Foxglove on {}", args.bind))?;
    let shown = SocketAddr::new(args.bind.ip(), server.port());
    println!("serving Foxglove WebSocket on ws://{shown} (open it in Foxglove: Open connection, Foxglove WebSocket)");
    let server = Arc::new(server);
    // Set once, right after the start; nothing else sets it.
    let _ = server_handle.set(Arc::clone(&server));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = recorder.next_live() => batch,
            () = &mut shutdown => break,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) if err.is_connection_error() => {
                tracing::warn!(error = %err, "redis unreachable; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let mut changed = Vec::new();
        for message in &batch {
            let index = Topic::ALL.iter().position(|topic| *topic == message.topic).unwrap_or(0);
            log(&channels[index], &message.data, message.log_time);
            if message.topic == Topic::Params
                && let Ok(record) = serde_json::from_slice::<ParamRecord>(&message.data)
                && let Some(parameter) = json_parameter(&record.name, &record.new)
            {
                changed.push(parameter);
            }
        }
        if !changed.is_empty() {
            server.publish_parameter_values(changed);
        }
    }
    drop(server_handle);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().wait().await;
    }
    Ok(exit::SUCCESS)
}

fn log(channel: &Arc<RawChannel>, data: &[u8], log_time: u64) {
    channel.log_with_meta(
        data,
        PartialMetadata {
            log_time: Some(log_time),
        },
    );
}

/// Answers Foxglove's parameter requests from `tatbot:param:*`.
struct ParamHandler {
    params: Params,
    /// The server, to tell every subscriber about a set; filled right after the start.
    server: Arc<OnceLock<Arc<WebSocketServerHandle>>>,
}

impl ParameterHandler for ParamHandler {
    fn get(
        &self,
        _client: AnyClient,
        names: Vec<String>,
        _request_id: Option<String>,
        responder: GetParametersResponder,
    ) {
        let params = self.params.clone();
        tokio::spawn(async move {
            let found = match params.list(&Prefix::all()).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list parameters for Foxglove");
                    Vec::new()
                }
            };
            let answer = found
                .iter()
                .filter(|param| names.is_empty() || names.iter().any(|name| name == param.name.as_str()))
                .map(|param| foxglove_parameter(param.name.as_str(), &param.value))
                .collect();
            responder.respond(answer);
        });
    }

    fn set(
        &self,
        _client: AnyClient,
        parameters: Vec<Parameter>,
        _request_id: Option<String>,
        responder: SetParametersResponder,
    ) {
        let params = self.params.clone();
        let server = Arc::clone(&self.server);
        tokio::spawn(async move {
            let mut answer = Vec::new();
            for parameter in parameters {
                match set_one(&params, &parameter).await {
                    Ok(applied) => answer.push(applied),
                    Err(err) => {
                        tracing::warn!(name = %parameter.name, error = %err, "Foxglove parameter set refused");
                        // Answer with the stored value so the client shows what holds.
                        if let Ok(name) = ParamName::new(parameter.name.as_str())
                            && let Ok(Some(stored)) = params.get(&name).await
                        {
                            answer.push(foxglove_parameter(name.as_str(), &stored.value));
                        }
                    }
                }
            }
            if let Some(server) = server.get() {
                server.publish_parameter_values(answer.clone());
            }
            responder.respond(answer);
        });
    }
}

/// Sets one parameter from a Foxglove value, checked against its declaration.
async fn set_one(params: &Params, parameter: &Parameter) -> anyhow::Result<Parameter> {
    let name = ParamName::new(parameter.name.as_str())?;
    let stored = params
        .get(&name)
        .await?
        .ok_or_else(|| tatbot_state::Error::ParamNotFound(name.to_string()))?;
    let text = match &parameter.value {
        Some(FoxValue::String(text)) => text.clone(),
        Some(value) => serde_json::to_string(value)?,
        None => anyhow::bail!("no value given"),
    };
    let value = stored.parse_value(&text)?;
    let applied = params.set(&name, &value).await?;
    Ok(foxglove_parameter(applied.name.as_str(), &applied.value))
}

fn foxglove_parameter(name: &str, value: &ParamValue) -> Parameter {
    match value {
        ParamValue::Bool(flag) => Parameter::bool(name, *flag),
        ParamValue::Int(number) => Parameter::integer(name, *number),
        ParamValue::Float(number) => Parameter::float64(name, *number),
        ParamValue::String(text) => Parameter::string(name, text.as_str()),
        ParamValue::IntList(numbers) => Parameter::integer_array(name, numbers.iter().copied()),
        ParamValue::FloatList(numbers) => Parameter::float64_array(name, numbers.iter().copied()),
        ParamValue::BoolList(flags) => Parameter {
            name: name.to_owned(),
            r#type: None,
            value: Some(FoxValue::Array(
                flags.iter().map(|flag| FoxValue::Bool(*flag)).collect(),
            )),
        },
        ParamValue::StringList(texts) => Parameter {
            name: name.to_owned(),
            r#type: None,
            value: Some(FoxValue::Array(
                texts.iter().map(|text| FoxValue::String(text.clone())).collect(),
            )),
        },
    }
}

/// A parameter from an audit-log value.
fn json_parameter(name: &str, value: &serde_json::Value) -> Option<Parameter> {
    let value: ParamValue = serde_json::from_value(value.clone()).ok()?;
    Some(foxglove_parameter(name, &value))
}
