//! A worker's statistics report where the backends it loaded run (`Backend::placement`): nothing
//! before its first load, then the provider of its last load and the first fallback reported.

mod common;

use std::sync::Arc;

use common::{Build, DIM, ModelSpec, multi_config, start_models};
use inferpool_core::{CloseMode, Placement, sim::SimBackend};

/// Models `names`, any worker, 1 byte each.
fn specs(names: &[&'static str]) -> Vec<ModelSpec> {
  names.iter().map(|&name| ModelSpec { name, memory: 1, priority: 0, workers: None }).collect()
}

fn placed(provider: &str, fallback: Option<&str>) -> Placement {
  Placement { provider: provider.to_owned(), fallback: fallback.map(str::to_owned) }
}

#[test]
fn a_worker_reports_where_its_backend_runs_once_loaded() {
  // Worker 0's backends run on the CPU (the default), worker 1's on a GPU.
  let build: Build = Arc::new(|worker, _| {
    let placement = if worker == 1 { placed("cuda", None) } else { Placement::default() };
    Ok(SimBackend { dimension: DIM, placement, ..SimBackend::default() })
  });
  let (pool, _) = start_models(&multi_config(2, 100), specs(&["a"]), Vec::new(), build).unwrap();
  let before = pool.stats();
  for worker in &before.workers {
    assert_eq!((worker.provider.as_deref(), worker.fallback.as_deref()), (None, None));
  }
  pool.preload(0, None).unwrap();
  let after = pool.stats();
  let seen: Vec<_> =
    after.workers.iter().map(|w| (w.provider.as_deref(), w.fallback.as_deref())).collect();
  assert_eq!(seen, vec![(Some("cpu"), None), (Some("cuda"), None)]);
  pool.close(CloseMode::Cancel);
}

#[test]
fn a_fallback_stays_reported_and_the_provider_follows_the_last_load() {
  // Model 0 could not run where it was meant to; model 1 runs on the device it fell back to,
  // and model 2 on another provider.
  let build: Build = Arc::new(|_, model| {
    let placement = match model {
      0 => placed("cpu", Some("no GPU here")),
      1 => placed("cpu", None),
      _ => placed("sim", None),
    };
    Ok(SimBackend { dimension: DIM, placement, ..SimBackend::default() })
  });
  let (pool, _) =
    start_models(&multi_config(1, 100), specs(&["a", "b", "c"]), Vec::new(), build).unwrap();
  let worker = |pool: &inferpool_core::Pool| {
    let stats = pool.stats().workers.remove(0);
    (stats.provider, stats.fallback)
  };
  let fallen = Some("no GPU here".to_owned());
  pool.preload(0, None).unwrap();
  assert_eq!(worker(&pool), (Some("cpu".to_owned()), fallen.clone()));
  pool.unload(0).unwrap();
  pool.preload(1, None).unwrap();
  assert_eq!(worker(&pool), (Some("cpu".to_owned()), fallen.clone()));
  pool.preload(2, None).unwrap();
  assert_eq!(worker(&pool), (Some("sim".to_owned()), fallen));
  pool.close(CloseMode::Cancel);
}
