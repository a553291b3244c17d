using Microsoft.VisualStudio.TestTools.UnitTesting;

[assembly: Parallelize(Workers = 1, Scope = ExecutionScope.ClassLevel)]

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public static class AssemblySetup
{
    private static string? _runTemp;

    /// <summary>Tests touch TorchSharp directly, so load it through BootMAE's native preparation first. Every temporary
    /// file of the run (the tests' own and those of child processes, which inherit TMPDIR) goes into one folder of this
    /// run, removed at the end, so that failed or killed tests leave nothing in the machine's temp folder.</summary>
    [AssemblyInitialize]
    public static void LoadTorch(TestContext context)
    {
        _ = context;
        _runTemp = Path.Combine(Path.GetTempPath(), $"bootmae-tests-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_runTemp);
        Environment.SetEnvironmentVariable("TMPDIR", _runTemp);
        Assert.AreEqual(_runTemp + Path.DirectorySeparatorChar, Path.GetTempPath(), "Path.GetTempPath() must follow TMPDIR");
        BootMaeRuntime.EnsureTorchLoaded();
        TorchSharp.torch.set_num_threads(Math.Max(1, Environment.ProcessorCount));
    }

    /// <summary>Removes the run's temporary folder.</summary>
    [AssemblyCleanup]
    public static void RemoveRunTemp()
    {
        if (_runTemp is not null && Directory.Exists(_runTemp))
        {
            Directory.Delete(_runTemp, recursive: true);
        }
    }
}
