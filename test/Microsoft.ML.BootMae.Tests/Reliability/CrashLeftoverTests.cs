using System.Diagnostics;
using Microsoft.ML.BootMae.Persistence;
using Microsoft.ML.Data;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Crash leftovers and shutdown races (issue 10, items 7 and 8): staging folders and files of a killed writer are
/// swept (only this library's names, only stale ones), saves stage beside their target and leave nothing behind, and
/// Dispose during a running Transform waits or gives ObjectDisposedException, never a native crash.
/// </summary>
[TestClass]
public sealed class CrashLeftoverTests
{
    private static readonly TimeSpan PastGrace = DurableFiles.DeadWriterGrace + TimeSpan.FromSeconds(30);

    [TestMethod]
    public void SweepRemovesOnlyStaleTemporariesOfThisLibrary()
    {
        using var dir = new TempFolder();
        int dead = DeadPid();
        int live = Environment.ProcessId;
        string Make(string name, TimeSpan age, bool folder = true)
        {
            var path = Path.Combine(dir.Path, name);
            if (folder)
            {
                Directory.CreateDirectory(path);
                File.WriteAllText(Path.Combine(path, "weights.bin"), "x");
                Backdate(path, age);
            }
            else
            {
                File.WriteAllText(path, "x");
                File.SetLastWriteTimeUtc(path, DateTime.UtcNow - age);
            }

            return path;
        }

        string g = Guid.NewGuid().ToString("N");
        var deadStale = Make($".step-00000003.{dead}.{g}.tmp", PastGrace);
        var deadFresh = Make($".step-00000004.{dead}.{g}.tmp", TimeSpan.Zero);
        var liveStale = Make($".step-00000005.{live}.{g}.tmp", PastGrace);
        var oldNameAncient = Make($".step-00000006.{g}.tmp", TimeSpan.FromHours(25));
        var oldNameRecent = Make($".step-00000007.{g}.tmp", PastGrace);
        var foreign = Make(".step-notours.tmp", TimeSpan.FromDays(3));
        var otherTarget = Make($".other.zip.{dead}.{g}.tmp", TimeSpan.FromDays(3), folder: false);
        var checkpoint = Make("step-00000002", TimeSpan.FromDays(3));

        var removed = DurableFiles.SweepStale(dir.Path, @"step-\d+");

        CollectionAssert.AreEquivalent(new[] { deadStale, oldNameAncient }, removed.ToArray());
        Assert.IsFalse(Directory.Exists(deadStale));
        Assert.IsFalse(Directory.Exists(oldNameAncient));
        foreach (var kept in new[] { deadFresh, liveStale, oldNameRecent, foreign, checkpoint })
        {
            Assert.IsTrue(Directory.Exists(kept), $"{kept} must be kept");
        }

        Assert.IsTrue(File.Exists(otherTarget), "another target's temporaries are not this sweep's business");
    }

    [TestMethod]
    public void KillDuringCheckpointWriteLeavesAStagingFolderThatTheNextSaveSweeps()
    {
        using var dir = new TempFolder();
        var benchmarks = LimitedChild.BenchmarksDll();
        var start = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { benchmarks, "pretrain", "--preset", "tiny28", "--epochs", "200", "--batch", "20", "--train-per-class", "2", "--checkpoint-dir", dir.Path },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var child = Process.Start(start)!;
        child.OutputDataReceived += (_, _) => { };
        child.ErrorDataReceived += (_, _) => { };
        child.BeginOutputReadLine();
        child.BeginErrorReadLine();
        string? staging = null;
        var watch = Stopwatch.StartNew();
        try
        {
            while (staging is null && !child.HasExited && watch.Elapsed < TimeSpan.FromSeconds(120))
            {
                staging = Directory.EnumerateDirectories(dir.Path, ".step-*.tmp").FirstOrDefault();
            }

            Assert.IsNotNull(staging, "no checkpoint write was caught in progress");
            // kill -9 of the child by its own id, in the middle of the write.
            Process.Start("kill", new[] { "-9", child.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) })!.WaitForExit();
            child.WaitForExit();
        }
        finally
        {
            if (!child.HasExited)
            {
                child.Kill();
            }
        }

        Assert.AreEqual(137, child.ExitCode, "the child must have died by SIGKILL");
        Assert.IsTrue(Directory.Exists(staging), "the killed writer leaves its staging folder");
        StringAssert.Contains(Path.GetFileName(staging), $".{child.Id}.", "staging names carry the writer's process id");
        var finished = Directory.GetDirectories(dir.Path, "step-*");

        // The next writer in this folder (a resumed run) removes it once the grace has passed; finished checkpoints stay.
        Backdate(staging!, PastGrace);
        CheckpointFolder.Save(dir.Path, "test", 1, new TrainingPosition(999_999, 0, 0, 1, 1), MlNetTestData.Tiny8, "fp",
            new (string, Action<BinaryWriter>)[] { ("a.bin", w => w.Write(1)) }, keep: 1000);
        Assert.IsFalse(Directory.Exists(staging), "the stale staging folder must be swept");
        Assert.IsEmpty(Directory.GetFileSystemEntries(dir.Path, ".*.tmp"));
        foreach (var checkpoint in finished)
        {
            Assert.IsTrue(Directory.Exists(checkpoint), $"{checkpoint} must survive the sweep");
        }
    }

    [TestMethod]
    public void SaveBootMaeStagesBesideTheTargetLeavesNothingAndSweepsADeadWritersLeftovers()
    {
        using var dir = new TempFolder();
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 2);
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 3);
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var model = ml.Transforms.BootMaeFeaturize(encoder).Fit(data);
        var path = Path.Combine(dir.Path, "model.zip");
        string g = Guid.NewGuid().ToString("N");
        int dead = DeadPid();
        // What a kill -9 during SaveBootMae left: the staged model and ML.NET's staged zip, both beside the target.
        var leftovers = new[] { $".model.zip.{dead}.{g}.tmp", $".model.zip.{dead}.{g}.mlnet.tmp" }.Select(n => Path.Combine(dir.Path, n)).ToArray();
        var inFlight = Path.Combine(dir.Path, $".model.zip.{Environment.ProcessId}.{g}.tmp");
        foreach (var f in leftovers.Append(inFlight))
        {
            File.WriteAllText(f, "partial");
            File.SetLastWriteTimeUtc(f, DateTime.UtcNow - PastGrace);
        }

        // Staged in TMPDIR before: "bootmae-{guid}.zip"; a stream save now stages ".bootmae-staging.{pid}.{guid}.mlnet.tmp".
        int InTmp() => Directory.GetFiles(Path.GetTempPath(), "bootmae-*.zip").Length + Directory.GetFiles(Path.GetTempPath(), ".bootmae-staging.*").Length;
        var tmpBefore = InTmp();
        ml.Model.SaveBootMae(model, data.Schema, path);

        CollectionAssert.AreEquivalent(new[] { path, inFlight }, Directory.GetFileSystemEntries(dir.Path));
        Assert.AreEqual(tmpBefore, InTmp(), "nothing staged in TMPDIR");
        using var loaded = (IDisposable)new MLContext(1).Model.LoadBootMae(path, out _);
    }

    [TestMethod]
    public void KillDuringSaveBootMaeKeepsThePreviousModelAndTheNextSaveSweepsTheLeftovers()
    {
        using var dir = new TempFolder();
        var models = Directory.CreateDirectory(Path.Combine(dir.Path, "models")).FullName;
        var tmp = Directory.CreateDirectory(Path.Combine(dir.Path, "tmp")).FullName;
        var path = Path.Combine(models, "model.zip");
        // The child saves a Tiny28 featurizer (21 MB of weights) to model.zip once, reports its features, then saves it
        // there again and again; it stages in a TMPDIR of its own so that anything it left there shows.
        var start = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { LimitedChild.BenchmarksDll(), "reliability-probe", "save-loop", models },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            Environment = { ["TMPDIR"] = tmp, ["DOTNET_EnableDiagnostics"] = "0", ["OMP_WAIT_POLICY"] = "PASSIVE", ["OMP_NUM_THREADS"] = "1" },
        };
        using var child = Process.Start(start)!;
        var saved = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
        child.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                output.Enqueue(line);
                if (line.Contains("\"case\":\"saved\"", StringComparison.Ordinal))
                {
                    saved.TrySetResult((string)System.Text.Json.Nodes.JsonNode.Parse(line)!["features"]!);
                }
            }
        };
        child.ErrorDataReceived += (_, e) => output.Enqueue(e.Data ?? string.Empty);
        child.BeginOutputReadLine();
        child.BeginErrorReadLine();
        string childFeatures;
        string[] leftovers;
        try
        {
            Assert.IsTrue(saved.Task.Wait(TimeSpan.FromSeconds(120)), "the child never saved: " + string.Join("\n", output));
            childFeatures = saved.Task.Result;
            var model = File.ReadAllBytes(path);
            string? staging = null;
            var watch = Stopwatch.StartNew();
            while (staging is null && !child.HasExited && watch.Elapsed < TimeSpan.FromSeconds(60))
            {
                staging = Directory.EnumerateFiles(models, $".model.zip.{child.Id}.*.tmp").FirstOrDefault();
            }

            Assert.IsNotNull(staging, "no save was caught in progress: " + string.Join("\n", output));
            // kill -9 of the child by its own id, in the middle of SaveBootMae.
            Assert.AreEqual(0, Kill(child.Id, 9));
            child.WaitForExit();
            Assert.AreEqual(137, child.ExitCode, "the child must have died by SIGKILL");
            // The staged zips, and ML.NET's scratch folder when the kill came while ML.NET was writing its part.
            leftovers = Directory.GetFileSystemEntries(models, ".*.tmp");
            Assert.IsNotEmpty(leftovers, "a save killed midway leaves its staging file");
            foreach (var leftover in leftovers)
            {
                StringAssert.StartsWith(Path.GetFileName(leftover), $".model.zip.{child.Id}.", "staging names carry the writer's process id");
            }

            CollectionAssert.AreEqual(model, File.ReadAllBytes(path), "model.zip is the last complete save, untouched by the killed one");
        }
        finally
        {
            if (!child.HasExited)
            {
                child.Kill();
                child.WaitForExit();
            }
        }

        Assert.IsEmpty(Directory.GetFileSystemEntries(tmp, "*", SearchOption.AllDirectories), "SaveBootMae(path) stages nothing in TMPDIR: " + string.Join(", ", Directory.GetFileSystemEntries(tmp, "*", SearchOption.AllDirectories)));

        // The model the killed process had saved loads and predicts what it predicted there.
        var ml = new MLContext(1);
        var loaded = ml.Model.LoadBootMae(path, out var schema);
        try
        {
            Assert.AreEqual(childFeatures, FeatureHash(ml, loaded, Path.Combine(models, "images")));

            // The next save to that folder, once the grace has passed, removes the dead writer's leftovers.
            foreach (var leftover in leftovers)
            {
                if (Directory.Exists(leftover))
                {
                    Backdate(leftover, PastGrace);
                }
                else
                {
                    File.SetLastWriteTimeUtc(leftover, DateTime.UtcNow - PastGrace);
                }
            }

            ml.Model.SaveBootMae(loaded, schema, path);
        }
        finally
        {
            (loaded as IDisposable)?.Dispose();
        }

        CollectionAssert.AreEquivalent(new[] { path, Path.Combine(models, "images") }, Directory.GetFileSystemEntries(models));
        var again = ml.Model.LoadBootMae(path, out _);
        try
        {
            Assert.AreEqual(childFeatures, FeatureHash(ml, again, Path.Combine(models, "images")));
        }
        finally
        {
            (again as IDisposable)?.Dispose();
        }
    }

    [TestMethod]
    public void DisposeDuringTransformWaitsOrGivesObjectDisposedException()
    {
        for (int round = 0; round < 5; round++)
        {
            var encoder = BootMaeEncoder.CreateRandom(BootMaeArchitecture.Tiny28, seed: round);
            var pixels = new float[8 * 28 * 28];
            int ok = 0, disposed = 0;
            using var started = new CountdownEvent(4);
            var workers = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
            {
                started.Signal();
                while (true)
                {
                    try
                    {
                        var features = encoder.Embed(pixels, 8, BootMaePooling.Mean, BootMaeArchitecture.Tiny28.Depth - 1, BootMaePrecision.Float32);
                        Assert.IsTrue(features.All(float.IsFinite));
                        Interlocked.Increment(ref ok);
                    }
                    catch (ObjectDisposedException)
                    {
                        Interlocked.Increment(ref disposed);
                        return;
                    }
                }
            })).ToArray();
            started.Wait();
            Thread.Sleep(30);
            encoder.Dispose();
            Assert.IsTrue(Task.WaitAll(workers, TimeSpan.FromSeconds(60)));
            Assert.AreEqual(4, disposed, "every worker ends with ObjectDisposedException once the encoder is disposed");
            Assert.ThrowsExactly<ObjectDisposedException>(() => encoder.Embed(pixels, 8, BootMaePooling.Mean, 0, BootMaePrecision.Float32));
        }
    }

    private static void Backdate(string folder, TimeSpan age)
    {
        var when = DateTime.UtcNow - age;
        foreach (var f in Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories))
        {
            File.SetLastWriteTimeUtc(f, when);
        }

        Directory.SetLastWriteTimeUtc(folder, when);
    }

    /// <summary>SHA-256 of the Features column over the images of <paramref name="images"/> in name order (as ReliabilityProbe computes it).</summary>
    private static string FeatureHash(MLContext ml, ITransformer model, string images)
    {
        var rows = MlNetTestData.Rows(ml, Directory.GetFiles(images).Order(StringComparer.Ordinal).Select(f => (Path.GetFileName(f), "a")));
        var data = ml.Transforms.LoadRawImageBytes("Image", images, "ImagePath").Fit(rows).Transform(rows);
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (var row in model.Transform(data).GetColumn<VBuffer<float>>("Features"))
        {
            hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.DenseValues().ToArray().AsSpan()));
        }

        return Convert.ToHexString(hash.GetHashAndReset());
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    /// <summary>The id of a process that has exited (and has not been reused yet: ids are handed out in increasing order).</summary>
    internal static int DeadPid()
    {
        using var p = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.IsFalse(Directory.Exists($"/proc/{p.Id}"));
        return p.Id;
    }
}
