//! Which rank of a data-parallel step this process is, as the launcher that
//! started it (Open MPI's mpirun, or srun with PMIx or PMI2) says in its
//! environment. Both the engine's step runner and the training loop ask.

/// A process's place among the ranks of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rank {
    pub size: usize,
    pub rank: usize,
    /// Its rank among this node's ranks (which local GPU it takes).
    pub local: usize,
}

impl Rank {
    /// Rank 0 writes the step's outputs; the others only compute.
    pub fn leads(&self) -> bool {
        self.rank == 0
    }
}

/// This process's rank when a launcher started it as one of several.
pub fn launched() -> Option<Rank> {
    let var = |names: &[&str]| -> Option<usize> {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
    };
    // srun sets SLURM_NTASKS and SLURM_PROCID for each task it starts (a
    // batch script alone has one task, so it is not one of several).
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"])?;
    let rank = var(&[
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ])?;
    let local = var(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
    .unwrap_or(rank);
    (size > 1).then_some(Rank { size, rank, local })
}
