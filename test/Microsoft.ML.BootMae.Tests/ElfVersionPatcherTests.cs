using Microsoft.ML.BootMae.Native;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The ELF fix, on tiny libraries built by tools/make_elf_fixtures.sh (checked in under TestData/elf).</summary>
[TestClass]
public sealed class ElfVersionPatcherTests
{
    private const string LibStdCxx = "libstdc++.so.6";
    private const string Marker = "_ZSt21ios_base_library_initv";
    private static readonly HashSet<string> Markers = new() { Marker };

    public TestContext TestContext { get; set; } = null!;

    private string CopyFixture(string name)
    {
        var directory = Path.Combine(Path.GetTempPath(), "bootmae-elf-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        var target = Path.Combine(directory, name);
        File.Copy(Path.Combine(AppContext.BaseDirectory, "TestData", "elf", name), target);
        return target;
    }

    [TestMethod]
    public void ReadsRequirementsWithTheirSymbols()
    {
        var requirements = ElfVersionPatcher.ReadRequirements(CopyFixture("needs-marker.so"));
        var newest = requirements.Single(r => r.Library == LibStdCxx && r.Version == "GLIBCXX_3.4.32");
        CollectionAssert.AreEqual(new[] { Marker }, newest.Symbols.ToArray());
        Assert.IsFalse(newest.IsWeak);
        CollectionAssert.AreEqual(new[] { "real_function" }, requirements.Single(r => r.Version == "GLIBCXX_3.4.30").Symbols.ToArray());
    }

    [TestMethod]
    public void PatchesTheRightEntryOnly()
    {
        var path = CopyFixture("needs-marker.so");
        var before = File.ReadAllBytes(path);

        var outcome = ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32", Markers);

        Assert.AreEqual(ElfPatchOutcome.Patched, outcome);
        var after = File.ReadAllBytes(path);
        Assert.HasCount(before.Length, after);
        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToList();
        Assert.HasCount(1, changed, "only the flags byte of one Elf64_Vernaux entry may change");
        Assert.AreEqual(before[changed[0]] | 0x2, after[changed[0]]);

        var requirements = ElfVersionPatcher.ReadRequirements(path);
        Assert.IsTrue(requirements.Single(r => r.Version == "GLIBCXX_3.4.32").IsWeak);
        Assert.IsTrue(requirements.Where(r => r.Version != "GLIBCXX_3.4.32").All(r => !r.IsWeak));
    }

    [TestMethod]
    public void SecondRunIsANoOp()
    {
        var path = CopyFixture("needs-marker.so");
        Assert.AreEqual(ElfPatchOutcome.Patched, ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32", Markers));
        var once = File.ReadAllBytes(path);
        var stamp = File.GetLastWriteTimeUtc(path);

        Assert.AreEqual(ElfPatchOutcome.AlreadyWeak, ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32", Markers));

        CollectionAssert.AreEqual(once, File.ReadAllBytes(path));
        Assert.AreEqual(stamp, File.GetLastWriteTimeUtc(path));
    }

    [TestMethod]
    public void NotElfGivesAClearError()
    {
        var path = Path.Combine(Path.GetTempPath(), $"bootmae-not-elf-{Guid.NewGuid():N}.so");
        File.WriteAllText(path, "this is a text file, not a shared library, padded to more than sixty-four bytes......");

        var error = Assert.ThrowsExactly<InvalidDataException>(() => ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32"));

        StringAssert.Contains(error.Message, "is not an ELF file");
        StringAssert.Contains(error.Message, path);
    }

    [TestMethod]
    public void TruncatedElfGivesAClearError()
    {
        var path = CopyFixture("needs-marker.so");
        File.WriteAllBytes(path, File.ReadAllBytes(path).Take(200).ToArray());

        var error = Assert.ThrowsExactly<InvalidDataException>(() => ElfVersionPatcher.ReadRequirements(path));

        StringAssert.Contains(error.Message, "malformed");
    }

    [TestMethod]
    public void NoSuchEntryLeavesTheFileUntouched()
    {
        var path = CopyFixture("needs-3.4.30-only.so");
        var before = File.ReadAllBytes(path);
        var stamp = File.GetLastWriteTimeUtc(path);

        Assert.AreEqual(ElfPatchOutcome.NotRequired, ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32", Markers));

        CollectionAssert.AreEqual(before, File.ReadAllBytes(path));
        Assert.AreEqual(stamp, File.GetLastWriteTimeUtc(path));
    }

    [TestMethod]
    public void RefusesWhenACalledFunctionNeedsTheVersion()
    {
        var path = CopyFixture("needs-newer-function.so");
        var before = File.ReadAllBytes(path);

        var error = Assert.ThrowsExactly<InvalidOperationException>(() => ElfVersionPatcher.MakeVersionWeak(path, LibStdCxx, "GLIBCXX_3.4.32", Markers));

        StringAssert.Contains(error.Message, "newer_function");
        CollectionAssert.AreEqual(before, File.ReadAllBytes(path));
    }

    [TestMethod]
    public void ReadsDefinedVersions()
    {
        var versions = ElfVersionPatcher.ReadDefinedVersions(CopyFixture("fake-libstdc++.so.6"));

        Assert.IsTrue(versions.IsSupersetOf(new[] { "GLIBCXX_3.4", "GLIBCXX_3.4.30", "GLIBCXX_3.4.32" }));
    }

    [TestMethod]
    public void TheLoadedLibTorchSharpIsCompatibleWithThisHost()
    {
        // AssemblyInitialize loaded torch through BootMaeRuntime; its log says what it did to each copy.
        var log = BootMaeRuntime.PreparationLog;
        TestContext.WriteLine(string.Join(Environment.NewLine, log));
        var appLocal = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!OperatingSystem.IsLinux() || !File.Exists(appLocal))
        {
            Assert.Inconclusive("Only meaningful for a Linux x64 build with TorchSharp-cpu.");
        }

        var hostVersions = ElfVersionPatcher.ReadDefinedVersions(FindHostLibStdCxx());
        var unmet = ElfVersionPatcher.ReadRequirements(appLocal)
            .Where(r => r.Library == LibStdCxx && !r.IsWeak && !hostVersions.Contains(r.Version))
            .Select(r => r.Version)
            .ToList();
        Assert.IsEmpty(unmet, "strong requirements this host's libstdc++ lacks: " + string.Join(", ", unmet));
    }

    private static string FindHostLibStdCxx()
    {
        var mapped = File.ReadLines("/proc/self/maps")
            .Select(line => line.IndexOf('/') is var i and >= 0 ? line[i..].Trim() : string.Empty)
            .FirstOrDefault(p => Path.GetFileName(p).StartsWith("libstdc++.so", StringComparison.Ordinal));
        return mapped ?? "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
    }
}
