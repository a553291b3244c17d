using Microsoft.ML.BootMae.Persistence;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Checkpoint folders found by reading (issue 10): replacing a checkpoint never has a moment with neither the old
/// nor the new one (it used to delete the old folder, then move the new one in), a checkpoint moved aside by a
/// writer that crashed comes back, and a resume reads only files that the manifest lists and whose SHA-256 matches.
/// </summary>
[TestClass]
public sealed class CheckpointReplaceTests
{
    private static readonly (string Name, Action<BinaryWriter> Write)[] Files =
        Enumerable.Range(0, 8).Select(i => ($"f{i}.bin", (Action<BinaryWriter>)(w => w.Write(new byte[16 << 10])))).ToArray();

    [TestMethod]
    public void ReplacingACheckpointNeverLeavesItsNameMissing()
    {
        using var dir = new TempFolder();
        var final = Save(dir.Path, 7, Files);
        var manifest = Path.Combine(final, "manifest.json");
        long looks = 0, misses = 0;
        bool done = false;
        // Another reader (a resume, a pruning run) looks at the checkpoint the whole time it is being replaced.
        var watcher = new Thread(() =>
        {
            while (!Volatile.Read(ref done))
            {
                looks++;
                if (!File.Exists(manifest))
                {
                    misses++;
                }
            }
        });
        watcher.Start();
        try
        {
            for (int round = 0; round < 30; round++)
            {
                Assert.AreEqual(final, Save(dir.Path, 7, Files));
            }
        }
        finally
        {
            Volatile.Write(ref done, true);
            watcher.Join();
        }

        Assert.AreEqual(0L, misses, $"step-00000007 was missing in {misses} of {looks} looks while it was replaced");
        CollectionAssert.AreEquivalent(new[] { final }, Directory.GetFileSystemEntries(dir.Path), "no staging folder or old copy is left");
        Assert.IsNotNull(CheckpointFolder.FindLatestValid(dir.Path, "test", 1, MlNetTestData.Tiny8, "fp", "hint", null));

        // Where the names cannot be exchanged the old folder is moved aside first; that path leaves nothing either.
        DurableFiles.ForceMoveAsideForTests = true;
        try
        {
            Assert.AreEqual(final, Save(dir.Path, 7, Files));
        }
        finally
        {
            DurableFiles.ForceMoveAsideForTests = false;
        }

        CollectionAssert.AreEquivalent(new[] { final }, Directory.GetFileSystemEntries(dir.Path));
        Assert.IsNotNull(CheckpointFolder.FindLatestValid(dir.Path, "test", 1, MlNetTestData.Tiny8, "fp", "hint", null));
    }

    [TestMethod]
    public void ACheckpointMovedAsideByACrashedWriterIsRestoredNotSwept()
    {
        using var dir = new TempFolder();
        var final = Save(dir.Path, 5, Files);
        int dead = CrashLeftoverTests.DeadPid();
        // What a crash between moving the old checkpoint aside and moving the new one in leaves: only the aside copy.
        void Crash()
        {
            var aside = Path.Combine(dir.Path, $".step-00000005.{dead}.{Guid.NewGuid():N}.old.tmp");
            Directory.Move(final, aside);
            var old = DateTime.UtcNow - DurableFiles.DeadWriterGrace - TimeSpan.FromMinutes(5);
            foreach (var f in Directory.EnumerateFileSystemEntries(aside))
            {
                File.SetLastWriteTimeUtc(f, old);
            }

            Directory.SetLastWriteTimeUtc(aside, old);
        }

        Crash();
        var log = new List<string>();
        var found = CheckpointFolder.FindLatestValid(dir.Path, "test", 1, MlNetTestData.Tiny8, "fp", "hint", log.Add);
        Assert.IsNotNull(found, string.Join("\n", log));
        Assert.AreEqual(final, found.Value.Path);
        Assert.AreEqual(5L, found.Value.Position.Step);
        Assert.IsTrue(log.Any(l => l.Contains("Restored checkpoint", StringComparison.Ordinal) && l.Contains("step-00000005", StringComparison.Ordinal)), string.Join("\n", log));

        // The next save (which sweeps dead writers' temporaries) brings it back too, instead of deleting it.
        Crash();
        var next = Save(dir.Path, 6, Files);
        CollectionAssert.AreEquivalent(new[] { final, next }, Directory.GetFileSystemEntries(dir.Path));
    }

    [TestMethod]
    public void ReadWithReadsOnlyFilesTheManifestListsAndWhoseHashMatches()
    {
        using var dir = new TempFolder();
        var final = Save(dir.Path, 3, new (string, Action<BinaryWriter>)[] { ("a.bin", w => w.Write(41)) });
        int value = 0;
        CheckpointFolder.ReadWith(final, "a.bin", r => value = r.ReadInt32());
        Assert.AreEqual(41, value);

        // A file planted beside the manifest (or one a newer writer added) is never read.
        File.WriteAllBytes(Path.Combine(final, "planted.bin"), BitConverter.GetBytes(7));
        var planted = Assert.ThrowsExactly<InvalidDataException>(() => CheckpointFolder.ReadWith(final, "planted.bin", _ => Assert.Fail("planted.bin was read")));
        StringAssert.Contains(planted.Message, final);
        StringAssert.Contains(planted.Message, "does not list the file 'planted.bin'");
        Assert.ThrowsExactly<InvalidDataException>(() => CheckpointFolder.ReadWith(final, "../a.bin", _ => Assert.Fail("read outside")));

        // A listed file changed after the checkpoint was validated is refused, not read.
        File.WriteAllBytes(Path.Combine(final, "a.bin"), BitConverter.GetBytes(42));
        var changed = Assert.ThrowsExactly<InvalidDataException>(() => CheckpointFolder.ReadWith(final, "a.bin", _ => Assert.Fail("a changed a.bin was read")));
        StringAssert.Contains(changed.Message, "a.bin does not match its SHA-256");
    }

    private static string Save(string directory, long step, IReadOnlyList<(string Name, Action<BinaryWriter> Write)> files)
        => CheckpointFolder.Save(directory, "test", 1, new TrainingPosition(step, 0, 0, 10, 1), MlNetTestData.Tiny8, "fp", files, keep: 10);
}
