using Microsoft.VisualStudio.TestTools.UnitTesting;

[assembly: Parallelize(Workers = 1, Scope = ExecutionScope.ClassLevel)]

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public static class AssemblySetup
{
    /// <summary>Tests touch TorchSharp directly, so load it through BootMAE's native preparation first.</summary>
    [AssemblyInitialize]
    public static void LoadTorch(TestContext context)
    {
        _ = context;
        BootMaeRuntime.EnsureTorchLoaded();
        TorchSharp.torch.set_num_threads(Math.Max(1, Environment.ProcessorCount));
    }
}
