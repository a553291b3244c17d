using System.IO.Compression;
using System.Text.Json.Nodes;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class MlNetBridgeTests
{
    /// <summary>Pins the one reflection touch into ML.NET 5.0.1 internals (environment and seed of a catalog).</summary>
    [TestMethod]
    public void CatalogEnvironmentAndSeedAreReachable()
    {
        var ml = new MLContext(seed: 42);
        Assert.IsNotNull(BootMaeHost.TryGetEnvironment(ml.Transforms), "TransformsCatalog");
        Assert.IsNotNull(BootMaeHost.TryGetEnvironment(ml.MulticlassClassification.Trainers), "MulticlassClassificationTrainers");
        Assert.AreEqual(42, BootMaeHost.TryGetSeed(BootMaeHost.TryGetEnvironment(ml.Transforms)));
        Assert.IsNull(BootMaeHost.TryGetSeed(BootMaeHost.TryGetEnvironment(new MLContext().Transforms)));
        Assert.AreEqual(7, BootMaeHost.ResolveSeed(7, BootMaeHost.TryGetEnvironment(ml.Transforms)));
        Assert.AreEqual(BootMaeHost.DefaultSeed, BootMaeHost.ResolveSeed(null, null));
    }

    [TestMethod]
    public void LoggerWritesToMlContextLog()
    {
        var ml = new MLContext(seed: 1);
        var messages = new List<string>();
        ml.Log += (_, e) => messages.Add(e.Message);
        using (var log = new BootMaeLogger(BootMaeHost.TryGetEnvironment(ml.Transforms), "BootMaeTest"))
        {
            log.Info("hello {not a format} 50%");
        }

        Assert.IsTrue(messages.Any(m => m.Contains("hello {not a format} 50%", StringComparison.Ordinal) && m.Contains("BootMaeTest", StringComparison.Ordinal)),
            string.Join("\n", messages));
    }

    [TestMethod]
    public void PlainLoadFailsAtOnceNamingLoadBootMae()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 1);
        using var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(rows);
        var path = Path.Combine(files.Folder, "m.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        var ex = Assert.Throws<Exception>(() => ml.Model.Load(path, out _));

        // ML.NET creates loaders by reflection, so our error arrives wrapped in TargetInvocationException;
        // its text is in ex.ToString() (what logs and debuggers show) and is the innermost exception.
        var innermost = ex;
        while (innermost.InnerException is not null)
        {
            innermost = innermost.InnerException;
        }

        Assert.IsInstanceOfType<InvalidOperationException>(innermost);
        StringAssert.Contains(innermost.Message, "mlContext.Model.LoadBootMae");
        StringAssert.Contains(ex.ToString(), "LoadBootMae");
    }

    [TestMethod]
    public void ArchitectureMismatchOnLoadIsReported()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 1);
        using var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(rows);
        var path = Path.Combine(files.Folder, "m.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.GetEntry("BootMae/manifest.json")!;
            JsonObject manifest;
            using (var s = entry.Open())
            {
                manifest = (JsonObject)JsonNode.Parse(s)!;
            }

            manifest["stages"]![0]!["config"]!["architecture"]!["EmbedDim"] = 32;
            entry.Delete();
            using var w = zip.CreateEntry("BootMae/manifest.json").Open();
            w.Write(System.Text.Encoding.UTF8.GetBytes(manifest.ToJsonString()));
        }

        var ex = Assert.ThrowsExactly<InvalidDataException>(() => ml.Model.LoadBootMae(path, out _));
        StringAssert.Contains(ex.Message, "EmbedDim = 32");
    }
}
