/// What the launcher that started this process tells about the run, checked before the VM starts.
enum Launcher {
    /// The error for a program that Slurm's `srun` started as several tasks without a process-management
    /// interface (PMI/PMIx) that MPI understands, or nil when that is not the case.
    ///
    /// Each such task initialises MPI on its own and sees a world of one process, so every task would become
    /// a spawner with no workers and the program would run N times side by side. Inside an `srun` step
    /// (`SLURM_STEP_ID` set), the step's task count (`SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS`, else
    /// `SLURM_NPROCS`) above 1 while MPI's world has 1 process is that case.
    static func srunWithoutPMI(_ environment: [String: String], worldSize: Int) -> VMError? {
        guard worldSize == 1, environment["SLURM_STEP_ID"] ?? environment["SLURM_STEPID"] != nil else { return nil }
        let counts = ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"]
        guard let name = counts.first(where: { environment[$0] != nil }),
            let tasks = Int(environment[name]!), tasks > 1
        else { return nil }
        return VMError(
            .configuration,
            "srun started \(tasks) tasks (\(name)=\(tasks)) but MPI sees a world of 1 process: srun launched them "
                + "without a PMI that MPI understands, so each would run alone. Run `srun --mpi=pmix -n \(tasks) "
                + "program` (see `srun --mpi=list`), or run `mpirun -n \(tasks) program` inside the allocation "
                + "(salloc or an sbatch script) instead of srun"
        )
    }
}
