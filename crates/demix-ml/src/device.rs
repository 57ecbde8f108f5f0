//! Device selection, CPU threads, and the `demix doctor` report.

use serde::{Deserialize, Serialize};
use tch::{Cuda, Device};

use crate::error::{MlError, Result};

pub use demix_spec::train::DeviceChoice;

/// The device a choice means here; `auto` is CUDA 0 when available.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            let count = Cuda::device_count().max(0) as usize;
            if n as usize >= count {
                return Err(MlError::Spec(format!(
                    "device `{choice}` requested but {count} CUDA device(s) are available"
                )));
            }
            Ok(Device::Cuda(n as usize))
        }
    }
}

/// A device as a manifest writes it: `cpu`, `cuda:0`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// Sets torch's intra-op threads; 0 leaves torch's default. Inter-op threads
/// are left alone (torch allows setting them only once per process).
pub fn set_threads(n: u32) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorReport {
    pub libtorch_version: String,
    pub libtorch_lib: String,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cuda_devices: Vec<String>,
    pub cudnn_available: bool,
    pub cudnn_version: Option<i64>,
    pub cpu_threads: i32,
    pub has_mkl: bool,
    pub has_openmp: bool,
    /// Data-parallel training: the MPI library this worker was built with, if
    /// any, and whether NCCL is linked for CUDA tensors.
    pub mpi: Option<String>,
    pub nccl: bool,
}

pub fn doctor() -> DoctorReport {
    let cuda_available = Cuda::is_available();
    let count = Cuda::device_count();
    let cudnn = cuda_available && Cuda::cudnn_is_available();
    DoctorReport {
        libtorch_version: env!("DEMIX_LIBTORCH_VERSION").to_string(),
        libtorch_lib: option_env!("DEMIX_LIBTORCH_LIB").unwrap_or("").to_string(),
        cuda_available,
        cuda_device_count: count,
        cuda_devices: if count > 0 { gpu_names() } else { vec![] },
        cudnn_available: cudnn,
        cudnn_version: cudnn.then(tch::utils::version_cudnn),
        cpu_threads: tch::get_num_threads(),
        has_mkl: tch::utils::has_mkl(),
        has_openmp: tch::utils::has_openmp(),
        mpi: crate::dist::mpi_library(),
        nccl: cfg!(demix_nccl),
    }
}

/// GPU names from the NVIDIA driver's proc files (tch has no API for device
/// properties); empty when unreadable.
fn gpu_names() -> Vec<String> {
    let mut names = vec![];
    if let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            if let Ok(s) = std::fs::read_to_string(d.join("information"))
                && let Some(m) = s.lines().find_map(|l| l.strip_prefix("Model:"))
            {
                names.push(m.trim().to_string());
            }
        }
    }
    names
}

impl std::fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "libtorch:     {} ({})",
            self.libtorch_version, self.libtorch_lib
        )?;
        writeln!(f, "cpu threads:  {}", self.cpu_threads)?;
        writeln!(f, "mkl/openmp:   {}/{}", self.has_mkl, self.has_openmp)?;
        writeln!(
            f,
            "cuda:         {} ({} device(s))",
            self.cuda_available, self.cuda_device_count
        )?;
        for (i, n) in self.cuda_devices.iter().enumerate() {
            writeln!(f, "  cuda:{i}      {n}")?;
        }
        let dp = match &self.mpi {
            Some(m) => format!("yes: {m}{}", if self.nccl { ", NCCL" } else { "" }),
            None => "no (demix-worker built without MPI: feature `mpi`)".into(),
        };
        writeln!(f, "data parallel: {dp}")?;
        write!(
            f,
            "cudnn:        {}{}",
            self.cudnn_available,
            self.cudnn_version
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        let dev = |s: &str| s.parse::<DeviceChoice>().map(resolve_device);
        assert_eq!(dev("cpu").unwrap().unwrap(), Device::Cpu);
        assert!(dev("tpu").is_err());
        assert!(dev("cuda:x").is_err());
        if !Cuda::is_available() {
            assert_eq!(dev("auto").unwrap().unwrap(), Device::Cpu);
            assert!(dev("cuda:0").unwrap().is_err());
        }
        let r = doctor();
        assert!(r.libtorch_version.starts_with("2.11.0"), "{r:?}");
        assert!(r.to_string().contains("libtorch"));
    }
}
