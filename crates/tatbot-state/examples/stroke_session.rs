//! The seed's typical flow in Rust: start a stroke session, record progress, end it.
//!
//! The Redis target comes from the same resolution every tatbot binary uses: the Hydra YAML
//! `src/conf/redis/default.yaml`, an env file, `REDIS_HOST`/`REDIS_PORT`/`REDIS_PASSWORD`.
//!
//! ```text
//! REDIS_PORT=6390 cargo run -p tatbot-state --example stroke_session
//! ```

use tatbot_state::{ProgressUpdate, SessionPlan, StateManager};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node_id = std::env::var("TATBOT_NODE_ID").unwrap_or_else(|_| "hog".to_owned());
    let state = StateManager::connect_default(&node_id).await?;
    println!("redis: {}", state.config().endpoint);

    let session = state
        .start_stroke_session(&SessionPlan {
            total_strokes: 100,
            stroke_length: 50,
            scene: "default".into(),
        })
        .await?;
    println!("started {session}");
    state
        .update_stroke_progress(&session, &ProgressUpdate::new(5, 25))
        .await?;
    let progress = state
        .get_stroke_progress(&session)
        .await?
        .ok_or("the session vanished")?;
    println!(
        "stroke {}/{}, pose {}/{}",
        progress.stroke_idx, progress.total_strokes, progress.pose_idx, progress.stroke_length
    );
    state.end_stroke_session(&session).await?;
    println!("ended {session}");
    Ok(())
}
