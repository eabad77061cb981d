import Foundation
import Testing

@testable import ParallelVM

/// srun without a PMI that MPI understands: detected from the environment, refused with the fix.
@Suite(.serialized)
struct LauncherTests {
    @Test func srunTasksWithAWorldOfOneAreRefusedWithTheFix() throws {
        let error = try #require(Launcher.srunWithoutPMI(["SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"], worldSize: 1))
        #expect(error.code == .configuration)
        #expect(error.message.contains("srun started 3 tasks (SLURM_NTASKS=3)"))
        #expect(error.message.contains("srun --mpi=pmix -n 3 program"))
        #expect(error.message.contains("mpirun -n 3 program` inside the allocation"))
    }

    @Test func theStepsOwnTaskCountComesFirstThenTheOlderNames() throws {
        let step = try #require(
            Launcher.srunWithoutPMI(
                ["SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "2"],
                worldSize: 1
            )
        )
        #expect(step.message.contains("SLURM_STEP_NUM_TASKS=4"))
        let old = try #require(Launcher.srunWithoutPMI(["SLURM_NPROCS": "2", "SLURM_STEPID": "0"], worldSize: 1))
        #expect(old.message.contains("SLURM_NPROCS=2"))
    }

    @Test func everythingElseIsLeftAlone() {
        // mpirun inside an allocation, or srun with PMIx: MPI's world has every task.
        #expect(Launcher.srunWithoutPMI(["SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"], worldSize: 3) == nil)
        // One task, and a batch script outside any srun step (mpirun will be started from it).
        #expect(Launcher.srunWithoutPMI(["SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"], worldSize: 1) == nil)
        #expect(Launcher.srunWithoutPMI(["SLURM_NTASKS": "3"], worldSize: 1) == nil)
        #expect(Launcher.srunWithoutPMI(["SLURM_NTASKS": "three", "SLURM_STEP_ID": "0"], worldSize: 1) == nil)
        #expect(Launcher.srunWithoutPMI([:], worldSize: 1) == nil)
    }

    /// The scenarios program started without mpirun, as srun without PMI starts each of its tasks.
    @Test func aProgramStartedLikeSrunWithoutPMIExitsWithTheFix() throws {
        let run = try MPIRun.scenario(
            "slots",
            ranks: 1,
            environment: ["SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"],
            timeout: 60
        )
        #expect(!run.timedOut, "\(run)")
        #expect(run.status != 0, "\(run)")
        #expect(run.stderr.contains("srun --mpi=pmix -n 3 program"), "\(run)")
        #expect(run.value("slots") == nil, "\(run)")
        // The same program without Slurm's variables runs as one process.
        let alone = try MPIRun.scenario("slots", ranks: 1, environment: ["PARALLELVM_LOCAL_SLOTS": "1"], timeout: 60)
        #expect(alone.status == 0, "\(alone)")
        #expect(alone.value("slots") == "2", "\(alone)")
    }
}
