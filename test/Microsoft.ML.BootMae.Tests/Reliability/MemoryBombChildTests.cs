using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Issue 10, proof: memory bombs run in a child process with a memory limit (<see cref="LimitedChild.Limit"/>, 1 GiB)
/// and must fail fast with the library's own message, never by exhausting memory. The child runs the public API
/// (LoadRawImageBytes + BootMaeFeaturize / BootMaePretrain with SkipBadImages false and true, BootMaeEncoder.Load,
/// LoadBootMae of an encoder or classifier model) on inputs built here; a control run shows that the same bomb without
/// the header check goes past the limit.
/// </summary>
[TestClass]
public sealed class MemoryBombChildTests
{
    private static readonly TimeSpan ChildTimeout = TimeSpan.FromSeconds(120);

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void MemoryBombsFailFastWithTheLibrarysMessageUnderAMemoryLimit()
    {
        using var dir = new TempFolder();
        using var files = new MlNetTestData();
        var good = Path.Combine(files.Folder, files.WriteColour("ok.png"));
        string Images(string name, byte[] bomb)
        {
            var folder = Path.Combine(dir.Path, name);
            Directory.CreateDirectory(folder);
            // Rows are the folder's files in name order: a-ok.png is row 0, the bomb row 1.
            File.Copy(good, Path.Combine(folder, "a-ok.png"));
            File.WriteAllBytes(Path.Combine(folder, "b-bomb" + (bomb[0] == 0xFF ? ".jpg" : ".png")), bomb);
            return folder;
        }

        var bombs = new (string Folder, int Width, int Height)[]
        {
            (Images("png20k", HostileImageTests.PngDeclaring(20_000, 20_000)), 20_000, 20_000),
            (Images("png100k", HostileImageTests.PngDeclaring(100_000, 100_000)), 100_000, 100_000),
            (Images("jpeg60k", HostileImageTests.JpegDeclaring(60_000, 60_000)), 60_000, 60_000),
        };
        var hugeEncoder = Path.Combine(dir.Path, "huge-arch.bootmae");
        File.WriteAllBytes(hugeEncoder, HostileFileTests.Container("BOOTMAE1",
            new JsonObject { ["Format"] = "bootmae-encoder", ["Version"] = 1, ["Architecture"] = HostileFileTests.Arch(HostileFileTests.Huge) },
            HostileFileTests.SmallPayload(32 * 1024)));
        var hugePayload = Path.Combine(dir.Path, "huge-payload.bootmae");
        File.WriteAllBytes(hugePayload, HostileFileTests.Container("BOOTMAE1",
            new JsonObject { ["Format"] = "bootmae-encoder", ["Version"] = 1, ["Architecture"] = HostileFileTests.Arch(MlNetTestData.Tiny8) },
            HostileFileTests.SmallPayload(1024), claimedLength: int.MaxValue));
        var padded = PaddedManifestModel(dir);
        var classifier = HugeClassifierModel(dir);

        var args = new List<string>();
        foreach (var (folder, _, _) in bombs)
        {
            args.AddRange(new[] { "featurize", folder, "pretrain-strict", folder, "pretrain-skip", folder });
        }

        args.AddRange(new[] { "encoder", hugeEncoder, "encoder", hugePayload, "model", padded, "model", classifier });
        var run = LimitedChild.Run(LimitedChild.Limit, ChildTimeout, args);
        Report(run);

        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(0L, run.OomKills, "nothing may reach the limit");
        foreach (var (folder, width, height) in bombs)
        {
            var name = Path.GetFileName(folder);
            foreach (var kind in new[] { "featurize", "pretrain-strict" })
            {
                var message = Refused(run, kind, name);
                StringAssert.Contains(message, "MaxImagePixels");
                StringAssert.Contains(message, $"{width}x{height}");
                StringAssert.Contains(message, "row 1 of column 'Image'");
                StringAssert.Contains(message, "b-bomb.");
            }

            var skipped = Succeeded(run, "pretrain-skip", name);
            StringAssert.Contains(skipped, "skipped 1 training rows");
        }

        var encoderMessage = Refused(run, "encoder", "huge-arch.bootmae");
        StringAssert.Contains(encoderMessage, hugeEncoder);
        StringAssert.Contains(encoderMessage, "EmbedDim 262144");
        StringAssert.Contains(encoderMessage, "PayloadLength");
        var payloadMessage = Refused(run, "encoder", "huge-payload.bootmae");
        StringAssert.Contains(payloadMessage, hugePayload);
        StringAssert.Contains(payloadMessage, "truncated");
        var manifestMessage = Refused(run, "model", "padded.zip");
        StringAssert.Contains(manifestMessage, padded);
        StringAssert.Contains(manifestMessage, "manifest.json");
        StringAssert.Contains(manifestMessage, "16777216");
        var classifierMessage = Refused(run, "model", "classifier.zip");
        StringAssert.Contains(classifierMessage, classifier);
        StringAssert.Contains(classifierMessage, "PayloadLength");
        StringAssert.Contains(classifierMessage, "EmbedDim 262144");
        if (run.PeakBytes is { } peak)
        {
            Assert.IsLessThan(LimitedChild.Limit, peak, "the group's peak");
        }
    }

    [TestMethod]
    public void WithoutTheHeaderCheckTheSameBombGoesPastTheLimit()
    {
        // The control: MaxImagePixels = long.MaxValue lets the 20000x20000 bomb reach the decoder, which allocates and
        // fills 1.6 GB of pixels. Under the limit the child must not get through it; with the check (the test above)
        // it fails in milliseconds at about 200 MB.
        using var dir = new TempFolder();
        var folder = Path.Combine(dir.Path, "png20k");
        Directory.CreateDirectory(folder);
        using (var files = new MlNetTestData())
        {
            File.Copy(Path.Combine(files.Folder, files.WriteColour("ok.png")), Path.Combine(folder, "a-ok.png"));
        }

        File.WriteAllBytes(Path.Combine(folder, "b-bomb.png"), HostileImageTests.PngDeclaring(20_000, 20_000));
        var run = LimitedChild.Run(LimitedChild.Limit, ChildTimeout, new[] { "featurize-uncapped", folder });
        Report(run);

        var line = run.Lines.SingleOrDefault(l => (string?)l["case"] == "featurize-uncapped");
        if (run.Mechanism.StartsWith("cgroup", StringComparison.Ordinal))
        {
            // The kernel's OOM killer ends it: SIGKILL, no line for the case.
            Assert.AreEqual(137, run.ExitCode, run.Output);
            Assert.IsGreaterThanOrEqualTo(1L, run.OomKills);
            Assert.IsNull(line, run.Output);
        }
        else
        {
            // The address-space limit makes the decoder's allocation fail: never the library's MaxImagePixels refusal.
            Assert.IsTrue(line is null || (string?)line["outcome"] == "threw", run.Output);
            Assert.IsFalse(run.Output.Contains("MaxImagePixels (", StringComparison.Ordinal), run.Output);
        }
    }

    private string Refused(ProbeRun run, string kind, string pathEnd)
    {
        var line = run.Case(kind, pathEnd);
        Assert.AreEqual("threw", (string?)line["outcome"], line.ToJsonString());
        Assert.AreEqual(typeof(InvalidDataException).FullName, (string?)line["type"], line.ToJsonString());
        CheckFast(line);
        return (string)line["message"]!;
    }

    private string Succeeded(ProbeRun run, string kind, string pathEnd)
    {
        var line = run.Case(kind, pathEnd);
        Assert.AreEqual("ok", (string?)line["outcome"], line.ToJsonString());
        CheckFast(line);
        return (string?)line["detail"] ?? string.Empty;
    }

    // Fail fast: each case takes at most a few seconds (the refusals themselves take milliseconds; a case includes
    // building the pipeline, and on a loaded 2-core machine the first one its JIT), and its peak resident set stays
    // below half the limit (measured: about 200 MB, the runtime and libtorch included).
    private static void CheckFast(JsonObject line)
    {
        Assert.IsLessThan(5000L, (long)line["ms"]!, line.ToJsonString());
        if (line["peakRssBytes"] is JsonValue rss)
        {
            Assert.IsLessThan(LimitedChild.Limit / 2, (long)rss, line.ToJsonString());
        }
    }

    private void Report(ProbeRun run)
    {
        TestContext.WriteLine($"limit: {run.Mechanism}; exit {run.ExitCode}; wall {run.Wall.TotalSeconds:F1} s; group peak {run.PeakBytes >> 20} MiB; OOM kills {run.OomKills}");
        foreach (var line in run.Lines.Where(l => l["outcome"] is not null))
        {
            TestContext.WriteLine($"{line["case"]} {Path.GetFileName((string?)line["path"])}: {line["outcome"]} {line["type"]} in {line["ms"]} ms, peak RSS {((long?)line["peakRssBytes"] ?? 0) >> 20} MiB");
        }
    }

    private static string PaddedManifestModel(TempFolder dir)
    {
        var path = HostileFileTests.SavedModel(dir);
        var padded = Path.Combine(dir.Path, "padded.zip");
        File.Move(path, padded);
        // 40 MB of spaces compress to about 40 KB: a small file whose manifest would be parsed whole.
        HostileFileTests.EditZip(padded, zip => HostileFileTests.Replace(zip, "BootMae/manifest.json", Encoding.UTF8.GetBytes(new string(' ', 40 << 20) + "{}")));
        return padded;
    }

    /// <summary>A real classifier model zip whose classifier weights (and stage config) claim EmbedDim 262144, hashes fixed up.</summary>
    private static string HugeClassifierModel(TempFolder dir)
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 3);
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")).Fit(rows).Transform(rows);
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        using var model = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, MaxEpochs = 1, BatchSize = 3, Seed = 1,
        }).Fit(data);
        var path = Path.Combine(dir.Path, "classifier.zip");
        ml.Model.SaveBootMae(model, data.Schema, path);
        HostileFileTests.EditZip(path, zip =>
        {
            var manifest = JsonNode.Parse(HostileFileTests.Read(zip, "BootMae/manifest.json"))!.AsObject();
            var stage = manifest["stages"]![0]!.AsObject();
            Assert.AreEqual("classifier", (string?)stage["kind"]);
            var header = new JsonObject
            {
                ["Format"] = "bootmae-classifier", ["Version"] = 1, ["Architecture"] = HostileFileTests.Arch(HostileFileTests.Huge), ["NumberOfClasses"] = 3,
                ["HeadKind"] = "FineTune", ["SourceBlock"] = 1,
            };
            var weights = HostileFileTests.Container("BOOTMAEC", header, HostileFileTests.SmallPayload(32 * 1024));
            HostileFileTests.Replace(zip, (string)stage["entry"]!, weights);
            stage["sha256"] = Convert.ToHexString(SHA256.HashData(weights));
            stage["length"] = weights.Length;
            stage["config"]!["architecture"] = HostileFileTests.Arch(HostileFileTests.Huge);
            HostileFileTests.Replace(zip, "BootMae/manifest.json", Encoding.UTF8.GetBytes(manifest.ToJsonString()));
        });
        return path;
    }
}
