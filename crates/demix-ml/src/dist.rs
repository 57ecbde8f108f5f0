//! Data-parallel training across processes ("ranks"), started by `mpirun` (or
//! `srun --mpi=pmix` on Slurm). Open MPI is the launcher, the rendezvous and,
//! for CPU tensors, the all-reduce; on CUDA the gradients are summed by NCCL
//! (the ranks exchange NCCL's id through MPI). No collective is ours.
//!
//! Every rank takes a disjoint slice of each global batch, so the token stream
//! is the single-process one; gradients are summed (each rank's loss is already
//! scaled by its share of the global batch), and rank 0 alone writes.

// Without MPI a process is never one of several ranks; the rest is unused.
#![cfg_attr(not(feature = "mpi"), allow(dead_code, unused_imports))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{MlError, Result};

/// The ranks of this training, as MPI started them.
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// The rank among this node's ranks: which local GPU it takes.
    pub local_rank: usize,
    #[cfg(feature = "mpi")]
    comm: mpi::topology::SimpleCommunicator,
    #[cfg(all(demix_nccl, feature = "mpi"))]
    nccl: Option<crate::ffi::Nccl>,
    watchdog: Watchdog,
}

/// The size, rank and local rank the launcher gave this process; `None` for
/// a plain process.
pub fn launched() -> Option<(usize, usize, usize)> {
    demix_spec::launch::launched().map(|r| (r.size, r.rank, r.local))
}

/// The MPI library this worker was built with (`None` without the feature).
pub fn mpi_library() -> Option<String> {
    #[cfg(feature = "mpi")]
    {
        let v = mpi::environment::library_version().unwrap_or_default();
        Some(v.split(',').next().unwrap_or("MPI").trim().to_string())
    }
    #[cfg(not(feature = "mpi"))]
    None
}

/// Pins a rank to one GPU before CUDA starts: with `DEMIX_RANK_DEVICES` (the
/// GPU ids the engine gave the step, one per local rank), the rank's own id
/// becomes its only visible device, `cuda:0`. Slurm sets CUDA_VISIBLE_DEVICES
/// per task itself (`--gpus-per-task=1`). Call it first thing in main.
pub fn pin_rank_device() {
    let (Some((_, _, local)), Ok(ids)) = (launched(), std::env::var("DEMIX_RANK_DEVICES")) else {
        return;
    };
    let ids: Vec<&str> = ids.split(',').filter(|s| !s.is_empty()).collect();
    if let Some(id) = ids.get(local % ids.len().max(1)) {
        // SAFETY: called before any thread starts (main's first line).
        unsafe { std::env::set_var("CUDA_VISIBLE_DEVICES", id) };
    }
}

/// How long a rank waits in one collective before it decides a peer is gone
/// or stuck, and fails the whole step (`DEMIX_COLLECTIVE_TIMEOUT`, seconds).
pub fn collective_timeout() -> Duration {
    std::env::var("DEMIX_COLLECTIVE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(600), Duration::from_secs_f64)
}

/// The ranks this process belongs to: joined once (MPI initializes once per
/// process), then shared by every training the step runs (a trained-proxy
/// search trains many).
static WORLD: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();

struct Shared(World);

// SAFETY: MPI runs at its single-thread level: only the thread that runs the
// step calls it (the watchdog thread only reads atomics and exits).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// MPI's environment, held until [`finish`] finalizes (or aborts) it.
#[cfg(feature = "mpi")]
static UNIVERSE: std::sync::Mutex<Option<Held>> = std::sync::Mutex::new(None);

#[cfg(feature = "mpi")]
struct Held {
    // Dropped by `finish`: that finalizes MPI.
    _universe: mpi::environment::Universe,
}

// SAFETY: as `Shared`: touched only by the step's thread, at start and end.
#[cfg(feature = "mpi")]
unsafe impl Send for Held {}

/// Whether this process writes the step's files: it is alone, or rank 0.
pub fn leads() -> bool {
    launched().is_none_or(|(_, rank, _)| rank == 0)
}

/// Ends MPI when this process joined it: finalizes after a step that
/// succeeded, and aborts every rank after one that did not (a rank that
/// failed alone would leave the others waiting in a collective).
pub fn finish(ok: bool) {
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        let held = UNIVERSE.lock().ok().and_then(|mut u| u.take());
        if let (false, Some(w)) = (ok, WORLD.get()) {
            w.0.comm.abort(1);
        }
        drop(held);
    }
    #[cfg(not(feature = "mpi"))]
    let _ = ok;
}

/// Runs `f` on rank 0 and hands its value to every rank (alone: runs it).
/// Ranks that must agree on a value only rank 0 computes (a proxy's score)
/// get it this way, not by computing it again.
pub fn from_leader<T>(f: impl FnOnce() -> Result<T>) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let Some(w) = WORLD.get() else {
        return f();
    };
    w.0.broadcast_json(f)
}

impl World {
    /// Joins the ranks when this process is one of several; `None` alone.
    pub fn join(device: Device) -> Result<Option<&'static World>> {
        let Some((size, rank, local_rank)) = launched() else {
            return Ok(None);
        };
        if let Some(w) = WORLD.get() {
            return Ok(Some(&w.0));
        }
        let world = Self::join_mpi(size, rank, local_rank, device)?;
        Ok(Some(&WORLD.get_or_init(|| Shared(world)).0))
    }

    #[cfg(feature = "mpi")]
    fn broadcast_json<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        use mpi::traits::{Communicator, Root};
        let root = self.comm.process_at_rank(0);
        let mut bytes = if self.rank == 0 {
            serde_json::to_vec(&f()?).map_err(|e| MlError::Spec(e.to_string()))?
        } else {
            Vec::new()
        };
        let mut len = bytes.len() as u64;
        self.guard("receiving rank 0's result", || {
            root.broadcast_into(&mut len)
        });
        bytes.resize(len as usize, 0);
        self.guard("receiving rank 0's result", || {
            root.broadcast_into(&mut bytes[..])
        });
        serde_json::from_slice(&bytes).map_err(|e| MlError::Spec(format!("rank 0's result: {e}")))
    }

    #[cfg(not(feature = "mpi"))]
    fn broadcast_json<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        f()
    }

    #[cfg(not(feature = "mpi"))]
    fn join_mpi(size: usize, _: usize, _: usize, _: Device) -> Result<World> {
        Err(MlError::Spec(format!(
            "this process is one of {size} ranks, but demix-worker was built without MPI (feature `mpi`): install Open MPI (libopenmpi-dev) and rebuild it with scripts/demix"
        )))
    }

    #[cfg(feature = "mpi")]
    fn join_mpi(size: usize, rank: usize, local_rank: usize, device: Device) -> Result<World> {
        use mpi::traits::Communicator;
        let universe =
            mpi::initialize().ok_or_else(|| MlError::Spec("MPI was initialized twice".into()))?;
        let comm = universe.world();
        if let Ok(mut u) = UNIVERSE.lock() {
            *u = Some(Held {
                _universe: universe,
            });
        }
        if comm.size() as usize != size || comm.rank() as usize != rank {
            return Err(MlError::Spec(format!(
                "MPI says rank {} of {}, the launcher's environment rank {rank} of {size}",
                comm.rank(),
                comm.size()
            )));
        }
        #[cfg_attr(not(demix_nccl), allow(unused_mut))]
        let mut world = World {
            rank,
            size,
            local_rank,
            comm,
            #[cfg(all(demix_nccl, feature = "mpi"))]
            nccl: None,
            watchdog: Watchdog::start(rank),
        };
        if let Device::Cuda(d) = device {
            world.nccl_init(d)?;
        }
        Ok(world)
    }

    #[cfg(all(feature = "mpi", demix_nccl))]
    fn nccl_init(&mut self, _device: usize) -> Result<()> {
        use mpi::traits::{Communicator, Root};
        let mut id = vec![0u8; crate::ffi::Nccl::id_bytes()];
        if self.rank == 0 {
            id = crate::ffi::Nccl::unique_id()?;
        }
        self.guard("sharing NCCL's id", || {
            self.comm.process_at_rank(0).broadcast_into(&mut id[..])
        });
        self.nccl = Some(crate::ffi::Nccl::init(&id, self.size, self.rank)?);
        Ok(())
    }

    #[cfg(all(feature = "mpi", not(demix_nccl)))]
    fn nccl_init(&mut self, _: usize) -> Result<()> {
        Err(MlError::Spec(
            "data-parallel training on CUDA needs NCCL, and this demix-worker was built against a libtorch without CUDA"
                .into(),
        ))
    }

    /// Runs one collective under the watchdog: if it does not return within
    /// the collective timeout, a peer has died or hangs, and this rank exits
    /// (the launcher then stops every rank).
    fn guard<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        self.watchdog.arm(what);
        let out = f();
        self.watchdog.disarm();
        out
    }

    /// Sums `tensors` over the ranks, in place, in buckets of about 25 MB
    /// (one flat buffer per bucket, one collective each).
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        const BUCKET_BYTES: i64 = 25 << 20;
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0i64;
        for t in tensors {
            bucket.push(t);
            bytes += t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
            if bytes >= BUCKET_BYTES {
                self.reduce_bucket(&bucket)?;
                bucket.clear();
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            self.reduce_bucket(&bucket)?;
        }
        Ok(())
    }

    fn reduce_bucket(&self, bucket: &[&Tensor]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let flat = Tensor::f_cat(
            &bucket
                .iter()
                .map(|t| t.f_flatten(0, -1))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            0,
        )?;
        let flat = self.reduce_flat(flat)?;
        let mut offset = 0i64;
        for t in bucket {
            let n = t.numel() as i64;
            let part = flat.f_narrow(0, offset, n)?.f_view_as(t)?;
            t.shallow_clone().f_copy_(&part)?;
            offset += n;
        }
        Ok(())
    }

    #[cfg(feature = "mpi")]
    fn reduce_flat(&self, flat: Tensor) -> Result<Tensor> {
        #[cfg(all(demix_nccl, feature = "mpi"))]
        if let Some(n) = &self.nccl {
            self.guard("all-reduce (NCCL)", || n.all_reduce_sum(&flat))?;
            return Ok(flat);
        }
        self.reduce_host(flat)
    }

    #[cfg(not(feature = "mpi"))]
    fn reduce_flat(&self, flat: Tensor) -> Result<Tensor> {
        Ok(flat)
    }

    /// The CPU path: MPI's all-reduce over the f32 values.
    #[cfg(feature = "mpi")]
    fn reduce_host(&self, flat: Tensor) -> Result<Tensor> {
        use mpi::collective::SystemOperation;
        use mpi::traits::CommunicatorCollectives;
        let kind = flat.kind();
        let send: Vec<f32> =
            Vec::<f32>::try_from(flat.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)?;
        let mut recv = vec![0f32; send.len()];
        self.guard("all-reduce (MPI)", || {
            self.comm
                .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum())
        });
        Ok(Tensor::from_slice(&recv)
            .f_to_kind(kind)?
            .f_to_device(flat.device())?)
    }

    /// Whether any rank says yes: ranks stop together (a cancel on one).
    #[cfg(feature = "mpi")]
    pub fn any(&self, yes: bool) -> bool {
        use mpi::collective::SystemOperation;
        use mpi::traits::CommunicatorCollectives;
        let mut out = 0i32;
        self.guard("agreeing to stop", || {
            self.comm
                .all_reduce_into(&(yes as i32), &mut out, SystemOperation::max())
        });
        out > 0
    }

    #[cfg(not(feature = "mpi"))]
    pub fn any(&self, yes: bool) -> bool {
        yes
    }

    /// Waits for every rank (after rank 0 wrote what the others read).
    #[cfg(feature = "mpi")]
    pub fn barrier(&self) {
        use mpi::traits::CommunicatorCollectives;
        self.guard("waiting for the other ranks", || self.comm.barrier());
    }

    #[cfg(not(feature = "mpi"))]
    pub fn barrier(&self) {}
}

/// A thread that ends the process when a collective outlives the timeout.
struct Watchdog {
    /// When the armed collective started (ms since `t0`), 0 when none is.
    armed_at: Arc<AtomicU64>,
    what: Arc<std::sync::Mutex<String>>,
    t0: Instant,
}

impl Watchdog {
    fn start(rank: usize) -> Watchdog {
        let armed_at = Arc::new(AtomicU64::new(0));
        let what = Arc::new(std::sync::Mutex::new(String::new()));
        let t0 = Instant::now();
        let timeout = collective_timeout();
        let (a, w) = (armed_at.clone(), what.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let at = a.load(Ordering::Relaxed);
                if at == 0 {
                    continue;
                }
                let waited = t0.elapsed().saturating_sub(Duration::from_millis(at));
                if waited > timeout {
                    let what = w.lock().map(|s| s.clone()).unwrap_or_default();
                    eprintln!(
                        "rank {rank}: {what} has waited {:.0} s for the other ranks (DEMIX_COLLECTIVE_TIMEOUT {:.0} s): a rank has died or hangs; stopping",
                        waited.as_secs_f64(),
                        timeout.as_secs_f64()
                    );
                    // The launcher sees a rank end without finalizing and stops the rest.
                    std::process::exit(3);
                }
            }
        });
        Watchdog { armed_at, what, t0 }
    }

    fn arm(&self, what: &str) {
        if let Ok(mut w) = self.what.lock() {
            what.clone_into(&mut w);
        }
        let ms = self.t0.elapsed().as_millis() as u64;
        self.armed_at.store(ms.max(1), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.armed_at.store(0, Ordering::Relaxed);
    }
}
