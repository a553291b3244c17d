using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using BootMae.Samples;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.SamplesTests;

/// <summary>
/// A sample run as a user runs it, in its own process with output redirected (as in CI logs): plain progress lines,
/// no live bar, and Ctrl+C (SIGINT) stopping training with the checkpoint kept and exit code 130.
/// </summary>
[TestClass]
[DoNotParallelize]
public sealed partial class ProgressTests
{
    private string _folder = string.Empty;

    [TestInitialize]
    public void CreateFolder()
    {
        _folder = Path.Combine(Path.GetTempPath(), $"bootmae-progress-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_folder);
    }

    [TestCleanup]
    public void DeleteFolder()
    {
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }

    [TestMethod]
    public void RedirectedOutputGetsPlainProgressLines()
    {
        using var run = SampleProcess.Start("Featurize", "--quick", "--output", _folder);
        Assert.IsTrue(run.Process.WaitForExit(TimeSpan.FromMinutes(4)), "Featurize --quick ran over 4 minutes:\n" + run.Output);
        run.Process.WaitForExit();
        Assert.AreEqual(0, run.Process.ExitCode, run.Output + run.Error);

        var lines = run.Output.Split('\n');
        var steps = lines.Select(l => StepLine().Match(l)).Where(m => m.Success).ToList();
        Assert.IsGreaterThanOrEqualTo(2, steps.Count, run.Output);
        var numbers = steps.Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
        CollectionAssert.AreEqual(numbers.Order().ToList(), numbers, "step lines in order");
        Assert.IsTrue(steps.All(m => m.Groups[2].Value == "16"), "1,000 images in batches of 64: 16 steps");
        Assert.IsTrue(lines.Any(l => EpochLine().IsMatch(l)), run.Output);
        Assert.DoesNotContain("\r", run.Output, "no line rewritten in place");
        Assert.DoesNotContain("\u001b[", run.Output, "no terminal escape codes in a log");
        StringAssert.Contains(run.Output, "Done in ");
    }

    [TestMethod]
    public void CtrlCStopsTrainingKeepsTheCheckpointAndExitsWithAMessage()
    {
        using var run = SampleProcess.Start("Featurize", "--quick", "--epochs", "4", "--output", _folder);
        Assert.IsTrue(run.WaitForLine(l => StepLine().IsMatch(l), TimeSpan.FromMinutes(3)), "no step line:\n" + run.Output + run.Error);
        using (var kill = Process.Start("kill", ["-INT", run.Process.Id.ToString(CultureInfo.InvariantCulture)]))
        {
            kill.WaitForExit();
        }

        Assert.IsTrue(run.Process.WaitForExit(TimeSpan.FromMinutes(2)), "still running after Ctrl+C:\n" + run.Output + run.Error);
        run.Process.WaitForExit();
        Assert.AreEqual(SampleCommandLine.CanceledExitCode, run.Process.ExitCode, run.Output + run.Error);
        var checkpoints = Path.Combine(_folder, "checkpoints");
        StringAssert.Contains(run.Error, "Ctrl+C: stopping after the current step");
        StringAssert.Contains(run.Error, $"Cancelled. Pretraining stopped; its last checkpoint is {Path.Combine(checkpoints, "step-")}");
        StringAssert.Contains(run.Error, ": run again with --resume to continue from it.");
        Assert.IsNotEmpty(Directory.GetFileSystemEntries(checkpoints), "the checkpoint at the step reached");
        Assert.DoesNotContain("Unhandled exception", run.Error);
        Assert.DoesNotContain("Done in ", run.Output, "stopped before the end");
    }

    [GeneratedRegex(@"^  pretrain step (\d+)/(\d+) \(\s*\d+%\)  loss \d+\.\d{4} .* img/s")]
    private static partial Regex StepLine();

    [GeneratedRegex(@"^  pretrain epoch\s+\d+/\d+\s+step\s+\d+/\d+  loss \d+\.\d{4}")]
    private static partial Regex EpochLine();

    /// <summary>A sample's built dll run with <c>dotnet</c>, its output and error read as they come.</summary>
    private sealed class SampleProcess : IDisposable
    {
        private readonly System.Text.StringBuilder _output = new();
        private readonly System.Text.StringBuilder _error = new();
        private readonly SemaphoreSlim _lines = new(0);

        private SampleProcess(Process process)
        {
            Process = process;
        }

        public Process Process { get; }

        public string Output
        {
            get
            {
                lock (_output)
                {
                    return _output.ToString();
                }
            }
        }

        public string Error
        {
            get
            {
                lock (_error)
                {
                    return _error.ToString();
                }
            }
        }

        public static SampleProcess Start(string sample, params string[] args)
        {
            // test/<this>/bin/<Configuration>/net10.0 → samples/<sample>/bin/<Configuration>/net10.0/<sample>.dll
            var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var dll = Path.Combine(here.Parent!.Parent!.Parent!.Parent!.Parent!.FullName, "samples", sample, "bin", here.Parent.Name, here.Name, sample + ".dll");
            Assert.IsTrue(File.Exists(dll), $"build the samples first: {dll} is missing");
            // Through `env --default-signal=INT`: a test run started in the background by a non-interactive shell (as CI
            // may do) has SIGINT ignored, children inherit that, and .NET then never sees Ctrl+C. A user's terminal does
            // not ignore it, so the child gets the default disposition back (env execs dotnet: the pid is the sample's).
            var start = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            start.ArgumentList.Add("--default-signal=INT");
            start.ArgumentList.Add("dotnet");
            start.ArgumentList.Add(dll);
            foreach (var a in args)
            {
                start.ArgumentList.Add(a);
            }

            start.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
            var run = new SampleProcess(new Process { StartInfo = start });
            run.Process.OutputDataReceived += (_, e) => run.Append(run._output, e.Data, signal: true);
            run.Process.ErrorDataReceived += (_, e) => run.Append(run._error, e.Data, signal: false);
            run.Process.Start();
            run.Process.BeginOutputReadLine();
            run.Process.BeginErrorReadLine();
            return run;
        }

        public bool WaitForLine(Func<string, bool> match, TimeSpan timeout)
        {
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < timeout)
            {
                if (Output.Split('\n').Any(match))
                {
                    return true;
                }

                if (Process.HasExited)
                {
                    return false;
                }

                _lines.Wait(TimeSpan.FromSeconds(1));
            }

            return false;
        }

        public void Dispose()
        {
            if (!Process.HasExited)
            {
                Process.Kill(entireProcessTree: true);
            }

            Process.Dispose();
            _lines.Dispose();
        }

        private void Append(System.Text.StringBuilder to, string? line, bool signal)
        {
            if (line is null)
            {
                return;
            }

            lock (to)
            {
                to.Append(line).Append('\n');
            }

            if (signal)
            {
                _lines.Release();
            }
        }
    }
}
