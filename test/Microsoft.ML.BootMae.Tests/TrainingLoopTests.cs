using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The shared training loop on a scripted run (no tensors): when it asks the run to read its device sums (reports,
/// checkpoints, epoch ends, never inside a step), the positions it checkpoints, resume into an open epoch, the
/// non-finite stop's checkpoint hint, and cancellation.
/// </summary>
[TestClass]
public sealed class TrainingLoopTests
{
    private sealed class Batches(int perEpoch) : IImageBatchSource
    {
        public long? Count => perEpoch;

        public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
        {
            for (int i = 0; i < perEpoch; i++)
            {
                yield return new ImageBatch(new float[1], 1, null);
            }
        }
    }

    // Records every call with the loop's step; Step never reads the sums, as the product runs do not.
    private sealed class ScriptedRun : ITrainingRun
    {
        public TrainingLoop? Loop;
        public readonly List<string> Calls = new();
        public long? NotFiniteFromStep;

        public string? StopReason => null;

        public void BeginEpoch(int epoch, long skipped) => Calls.Add($"begin {epoch} skip {skipped}");

        public bool Step(ImageBatch batch, long step)
        {
            Calls.Add($"step {step}");
            return true;
        }

        public void ThrowIfNotFinite()
        {
            Calls.Add($"read at {Loop!.Step}");
            if (Loop.Step >= NotFiniteFromStep)
            {
                throw new BootMaeTrainingException($"The loss became NaN by step {Loop.Step}.");
            }
        }

        public BootMaeTrainingMetrics? TrainingReport(bool isEpochEnd)
        {
            ThrowIfNotFinite();
            return new BootMaeTrainingMetrics { Loss = 1 };
        }

        public void CheckEpochNotEmpty(int epoch, long batchesRead) => Calls.Add($"batches {batchesRead}");

        public void EndEpoch(int epoch, BootMaeTrainingMetrics? report) => Calls.Add($"end {epoch}");

        public string SaveCheckpoint(string directory, TrainingPosition position)
        {
            Calls.Add($"checkpoint {position.Step} {position.Epoch} {position.StepInEpoch}");
            return $"{directory}/ckpt-{position.Step}";
        }

        public Exception? OnCancelled(OperationCanceledException cancelled, long step)
        {
            Calls.Add($"cancelled {step}");
            return cancelled;
        }
    }

    private static (TrainingLoop Loop, ScriptedRun Run, List<BootMaeTrainingMetrics> Reports) Create(long totalSteps, bool lastBatchClosesEpoch,
        long? checkpointEvery, Action<BootMaeTrainingMetrics>? onReport = null)
    {
        var run = new ScriptedRun();
        var reports = new List<BootMaeTrainingMetrics>();
        var loop = new TrainingLoop(new TrainingLoopSettings(BatchSize: 1, StepsPerEpoch: 5, totalSteps, Seed: 3, MaxEpochs: null, LogEveryNSteps: 4,
            ReportAtFinalStep: false, lastBatchClosesEpoch, "dir", checkpointEvery), run, m => { reports.Add(m); onReport?.Invoke(m); }, log: null);
        run.Loop = loop;
        return (loop, run, reports);
    }

    [TestMethod]
    public void SumsAreReadOnlyAtReportsCheckpointsAndEpochEnds()
    {
        var (loop, run, reports) = Create(totalSteps: 12, lastBatchClosesEpoch: true, checkpointEvery: 6);

        loop.Run(new Batches(5), new TrainingPosition(0, 0, 0, 12, 3), CancellationToken.None);

        var reads = run.Calls.Where(c => c.StartsWith("read", StringComparison.Ordinal)).ToList();
        CollectionAssert.AreEqual(new[] { "read at 4", "read at 5", "read at 6", "read at 8", "read at 10", "read at 12", "read at 12" }, reads,
            "a read per report (steps 4 and 8, not the final 12) and epoch end (5, 10, 12) and per checkpoint (6, 12); none inside a step");
        CollectionAssert.AreEqual(new[] { "4 0 False", "5 0 True", "8 1 False", "10 1 True", "12 2 True" },
            reports.Select(r => $"{r.Step} {r.Epoch} {r.IsEpochEnd}").ToList());
        Assert.IsTrue(reports.All(r => r.TotalSteps == 12 && r.Dataset == BootMaeDataset.Train && r.Loss == 1));
        Assert.AreEqual(TimeSpan.Zero, reports[^1].Eta, "no step left at the end");
        CollectionAssert.AreEqual(new[] { "checkpoint 6 1 1", "checkpoint 12 2 2" }, run.Calls.Where(c => c.StartsWith("checkpoint", StringComparison.Ordinal)).ToList());
        Assert.HasCount(12, run.Calls.Where(c => c.StartsWith("step", StringComparison.Ordinal)).ToList());
    }

    [TestMethod]
    public void LastBatchOfAnEpochClosesItOnlyWhenTheRunSaysSo()
    {
        var (closing, closingRun, _) = Create(totalSteps: 10, lastBatchClosesEpoch: true, checkpointEvery: 5);
        closing.Run(new Batches(5), new TrainingPosition(0, 0, 0, 10, 3), CancellationToken.None);
        var (open, openRun, _) = Create(totalSteps: 10, lastBatchClosesEpoch: false, checkpointEvery: 5);
        open.Run(new Batches(5), new TrainingPosition(0, 0, 0, 10, 3), CancellationToken.None);

        CollectionAssert.AreEqual(new[] { "checkpoint 5 1 0", "checkpoint 10 2 0" }, closingRun.Calls.Where(c => c.StartsWith("checkpoint", StringComparison.Ordinal)).ToList());
        CollectionAssert.AreEqual(new[] { "checkpoint 5 0 5", "checkpoint 10 1 5" }, openRun.Calls.Where(c => c.StartsWith("checkpoint", StringComparison.Ordinal)).ToList());

        // Resumed from the open epoch's last checkpoint, the run finishes that epoch (its end, then an epoch-end checkpoint)
        // without a step; a closing run has nothing left to do.
        var (resumed, resumedRun, reports) = Create(totalSteps: 10, lastBatchClosesEpoch: false, checkpointEvery: null);
        resumed.Run(new Batches(5), new TrainingPosition(10, 1, 5, 10, 3), CancellationToken.None);
        CollectionAssert.AreEqual(new[] { "begin 1 skip 5", "batches 5", "read at 10", "end 1", "read at 10", "checkpoint 10 2 0" }, resumedRun.Calls);
        Assert.IsNull(reports.Single().Eta, "no step in this run: no ETA");
        var (done, doneRun, _) = Create(totalSteps: 10, lastBatchClosesEpoch: true, checkpointEvery: null);
        done.Run(new Batches(5), new TrainingPosition(10, 1, 5, 10, 3), CancellationToken.None);
        Assert.IsEmpty(doneRun.Calls);
    }

    [TestMethod]
    public void NonFiniteStopNamesTheLastGoodCheckpoint()
    {
        var (loop, run, _) = Create(totalSteps: 12, lastBatchClosesEpoch: true, checkpointEvery: 3);
        run.NotFiniteFromStep = 7;

        var error = Assert.ThrowsExactly<BootMaeTrainingException>(() => loop.Run(new Batches(5), new TrainingPosition(0, 0, 0, 12, 3), CancellationToken.None));

        Assert.AreEqual("The loss became NaN by step 8. The last good checkpoint is 'dir/ckpt-6'.", error.Message);
        Assert.AreEqual(8, loop.Step, "stopped at the first read after the bad step");
    }

    [TestMethod]
    public void CancellationCheckpointsThenRethrowsTheRunsChoice()
    {
        using var cts = new CancellationTokenSource();
        var (loop, run, _) = Create(totalSteps: 12, lastBatchClosesEpoch: true, checkpointEvery: null, onReport: m => cts.Cancel());

        var error = Assert.ThrowsExactly<OperationCanceledException>(() => loop.Run(new Batches(5), new TrainingPosition(2, 0, 2, 12, 3), cts.Token));

        Assert.AreEqual(cts.Token, error.CancellationToken);
        CollectionAssert.AreEqual(new[] { "begin 0 skip 2", "step 2", "step 3", "read at 4", "cancelled 4", "read at 4", "checkpoint 4 0 4", "read at 4" }, run.Calls,
            "cancelled before step 4's batch: the position of step 4 is checkpointed, the sums checked, and the run's exception rethrown");
    }
}
