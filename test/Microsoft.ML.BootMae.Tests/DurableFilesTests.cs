using Microsoft.ML.BootMae.Persistence;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The one staged write every file of the library goes through.</summary>
[TestClass]
public sealed class DurableFilesTests
{
    [TestMethod]
    public void WriteAtomicallyReplacesTheFileAndLeavesNoStagingFile()
    {
        var directory = Directory.CreateTempSubdirectory("bootmae-durable-").FullName;
        try
        {
            var target = Path.Combine(directory, "a.bin");
            File.WriteAllBytes(target, [1, 2, 3]);
            DurableFiles.WriteAtomically(target, s => s.Write([4, 5]));
            CollectionAssert.AreEqual(new byte[] { 4, 5 }, File.ReadAllBytes(target));
            DurableFiles.WriteAtomically(target, s => s.Write([6]), durable: false);
            CollectionAssert.AreEqual(new byte[] { 6 }, File.ReadAllBytes(target));

            // A failing writer leaves the old file and no staging file.
            Assert.ThrowsExactly<InvalidOperationException>(() => DurableFiles.WriteAtomically(target, s =>
            {
                s.Write([7, 7, 7]);
                throw new InvalidOperationException("writer failed");
            }));
            CollectionAssert.AreEqual(new byte[] { 6 }, File.ReadAllBytes(target));
            CollectionAssert.AreEqual(new[] { "a.bin" }, Directory.GetFileSystemEntries(directory).Select(Path.GetFileName).ToArray());
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [TestMethod]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void KeepUnixFileModeCarriesTheTargetsPermissionsOver()
    {
        if (OperatingSystem.IsWindows())
        {
            Assert.Inconclusive("Unix permissions only.");
        }

        var directory = Directory.CreateTempSubdirectory("bootmae-durable-").FullName;
        try
        {
            var target = Path.Combine(directory, "lib.so");
            File.WriteAllBytes(target, [1]);
            const UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute;
            File.SetUnixFileMode(target, mode);

            DurableFiles.WriteAtomically(target, s => s.Write([2]), keepUnixFileMode: true);
            Assert.AreEqual(mode, File.GetUnixFileMode(target), "the patched library keeps its permissions (the ELF patcher)");
            DurableFiles.WriteAtomically(target, s => s.Write([3]));
            Assert.AreNotEqual(mode, File.GetUnixFileMode(target), "without it the new file has the default permissions");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
