//! The C++ shim (csrc/, compiled by build.rs against libtorch's headers): ATen
//! ops tch does not bind, and NCCL. Tensors cross as tch's handles.

use std::ffi::{CStr, c_char};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{MlError, Result};

unsafe extern "C" {
    fn demix_free(p: *mut c_char);
    fn demix_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    fn demix_clip_grad_norm(
        grads: *const *mut C_tensor,
        n: usize,
        max_norm: f64,
        total: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// The shim's error message, if it returned one.
fn check(err: *mut c_char, what: &str) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, ours to free.
    let msg = unsafe {
        let m = CStr::from_ptr(err).to_string_lossy().into_owned();
        demix_free(err);
        m
    };
    Err(MlError::Spec(format!("{what}: {msg}")))
}

fn handles(ts: &[Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// One fused AdamW update (ATen's `_fused_adamw_`, PyTorch's
/// `AdamW(fused=True)`) of parameters sharing a weight decay. `steps` are
/// float scalars holding each parameter's update number after this call.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    let n = params.len();
    assert!(
        [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
            .iter()
            .all(|&l| l == n),
        "one gradient, moment pair and step per parameter"
    );
    let (p, g, m, v, s) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
        handles(steps),
    );
    // SAFETY: every pointer is a live tensor handle held by the slices above.
    let err = unsafe {
        demix_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
        )
    };
    check(err, "fused AdamW")
}

/// Scales `grads` in place to a global L2 norm of at most `max_norm` (0: no
/// clipping); returns the norm before clipping as a device scalar (no sync).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<Tensor> {
    let g = handles(grads);
    let mut total: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live handles; on success the shim sets `total` to a new tensor we own.
    let err = unsafe { demix_clip_grad_norm(g.as_ptr(), g.len(), max_norm, &mut total) };
    check(err, "gradient clipping")?;
    // SAFETY: a tensor the shim allocated with `new`, as tch's own handles are.
    Ok(unsafe { Tensor::from_ptr(total) })
}

/// NCCL's C API, declared here: nccl.h includes CUDA headers the wheel does
/// not ship. The values are NCCL's stable ABI (nccl.h, NCCL 2.x).
#[cfg(all(demix_nccl, feature = "mpi"))]
mod nccl {
    use std::ffi::{c_char, c_int, c_void};

    use tch::{Kind, Tensor};

    use crate::error::{MlError, Result};

    const UNIQUE_ID_BYTES: usize = 128;
    const NCCL_SUM: c_int = 0;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct UniqueId([c_char; UNIQUE_ID_BYTES]);

    unsafe extern "C" {
        fn ncclGetUniqueId(id: *mut UniqueId) -> c_int;
        fn ncclCommInitRank(
            comm: *mut *mut c_void,
            nranks: c_int,
            id: UniqueId,
            rank: c_int,
        ) -> c_int;
        fn ncclAllReduce(
            send: *const c_void,
            recv: *mut c_void,
            count: usize,
            dtype: c_int,
            op: c_int,
            comm: *mut c_void,
            stream: *mut c_void,
        ) -> c_int;
        fn ncclCommDestroy(comm: *mut c_void) -> c_int;
        fn ncclGetErrorString(r: c_int) -> *const c_char;
    }

    fn check(r: c_int, what: &str) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for every result code.
        let msg = unsafe { std::ffi::CStr::from_ptr(ncclGetErrorString(r)) };
        Err(MlError::Spec(format!("{what}: {}", msg.to_string_lossy())))
    }

    /// One rank's NCCL communicator, on the process's current CUDA device
    /// (each rank sees one: see [`crate::dist::pin_rank_device`]).
    pub struct Nccl(*mut c_void);

    // SAFETY: used from one thread at a time (the training loop).
    unsafe impl Send for Nccl {}

    impl Nccl {
        pub fn id_bytes() -> usize {
            UNIQUE_ID_BYTES
        }

        pub fn unique_id() -> Result<Vec<u8>> {
            let mut id = UniqueId([0; UNIQUE_ID_BYTES]);
            // SAFETY: NCCL fills the struct.
            check(unsafe { ncclGetUniqueId(&mut id) }, "ncclGetUniqueId")?;
            Ok(id.0.iter().map(|&c| c as u8).collect())
        }

        pub fn init(id: &[u8], size: usize, rank: usize) -> Result<Nccl> {
            let mut raw = UniqueId([0; UNIQUE_ID_BYTES]);
            for (d, s) in raw.0.iter_mut().zip(id) {
                *d = *s as c_char;
            }
            let mut comm = std::ptr::null_mut();
            // SAFETY: `raw` is rank 0's id, broadcast to every rank.
            let r = unsafe { ncclCommInitRank(&mut comm, size as c_int, raw, rank as c_int) };
            check(r, "ncclCommInitRank")?;
            Ok(Nccl(comm))
        }

        /// Sums a contiguous CUDA tensor over the ranks, in place. It runs on
        /// the default stream, where libtorch's own kernels run, so it follows
        /// the backward pass that wrote it without a host sync.
        pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
            let dtype = match t.kind() {
                Kind::Half => 6,
                Kind::Float => 7,
                Kind::Double => 8,
                Kind::BFloat16 => 9,
                k => return Err(MlError::Spec(format!("all-reduce of {k:?} tensors"))),
            };
            if !t.device().is_cuda() || !t.is_contiguous() {
                return Err(MlError::Spec(
                    "all-reduce of a tensor not contiguous on CUDA".into(),
                ));
            }
            let p = t.data_ptr();
            // SAFETY: `p` holds `numel` elements of `dtype` on this rank's device.
            let r = unsafe {
                ncclAllReduce(
                    p,
                    p,
                    t.numel(),
                    dtype,
                    NCCL_SUM,
                    self.0,
                    std::ptr::null_mut(),
                )
            };
            check(r, "ncclAllReduce")
        }
    }

    impl Drop for Nccl {
        fn drop(&mut self) {
            // SAFETY: created by `init`, destroyed once.
            unsafe {
                ncclCommDestroy(self.0);
            }
        }
    }
}

#[cfg(all(demix_nccl, feature = "mpi"))]
pub use nccl::Nccl;
