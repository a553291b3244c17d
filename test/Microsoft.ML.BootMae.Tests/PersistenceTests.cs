using System.IO.Compression;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class PersistenceTests
{
    private static float[][] Features(ITransformer model, IDataView rows)
    {
        var scored = model.Transform(rows);
        return scored.GetColumn<float[]>("Features").ToArray();
    }

    private static (ITransformer Model, IDataView Rows, MLContext Ml) Featurizer(MlNetTestData files, BootMaeEncoder encoder)
    {
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 5);
        var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Append(ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, SourceBlock = 0, Pooling = BootMaePooling.Cls }))
            .Fit(rows);
        return (model, rows, ml);
    }

    [TestMethod]
    public void SaveLoadRoundTripGivesIdenticalFeatures()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        var path = Path.Combine(files.Folder, "model.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        using var loaded = (TransformerChain<ITransformer>)new MLContext(2).Model.LoadBootMae(path, out var schema);
        Assert.AreEqual(rows.Schema.Count, schema.Count);
        var stage = loaded.OfType<BootMaeEncoderTransformer>().Single();
        Assert.AreEqual(BootMaePooling.Cls, stage.Pooling);
        Assert.AreEqual(0, stage.SourceBlock);
        Assert.AreEqual(MlNetTestData.Tiny8, stage.Encoder.Architecture);
        var before = Features(model, rows);
        var after = Features(loaded, rows);
        for (int i = 0; i < before.Length; i++)
        {
            CollectionAssert.AreEqual(before[i], after[i], $"row {i}");
        }

        // The label mapping (an ordinary ML.NET stage) survives too.
        Assert.IsNotNull(loaded.Transform(rows).Schema["Label"].Type as KeyDataViewType);
    }

    [TestMethod]
    public void StreamRoundTripLeavesTheStreamOpen()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        using var stream = new MemoryStream();
        ml.Model.SaveBootMae(model, rows.Schema, stream);
        Assert.IsTrue(stream.CanWrite);
        stream.Position = 0;
        using var loaded = (TransformerChain<ITransformer>)ml.Model.LoadBootMae(stream, out _);
        CollectionAssert.AreEqual(Features(model, rows)[2], Features(loaded, rows)[2]);
    }

    [TestMethod]
    public void PlainSaveNamesSaveBootMae()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        using var stream = new MemoryStream();
        var ex = Assert.Throws<InvalidOperationException>(() => ml.Model.Save(model, rows.Schema, stream));
        StringAssert.Contains(ex.Message, "SaveBootMae");
    }

    [TestMethod]
    public void PlainLoadNamesLoadBootMae()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        var path = Path.Combine(files.Folder, "model.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        var ex = Assert.Throws<Exception>(() => new MLContext(3).Model.Load(path, out _));
        var messages = string.Join(" | ", Chain(ex).Select(e => e.Message));
        StringAssert.Contains(messages, "LoadBootMae");
    }

    private static IEnumerable<Exception> Chain(Exception? ex)
    {
        for (; ex is not null; ex = ex.InnerException)
        {
            yield return ex;
        }
    }

    [TestMethod]
    public void TruncatedFileGivesAClearError()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        var path = Path.Combine(files.Folder, "model.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => ml.Model.LoadBootMae(path, out _));
        StringAssert.Contains(ex.Message, "truncated");
    }

    [TestMethod]
    public void TamperedWeightsAreDetected()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 9);
        var (model, rows, ml) = Featurizer(files, encoder);
        var path = Path.Combine(files.Folder, "model.zip");
        ml.Model.SaveBootMae(model, rows.Schema, path);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.GetEntry("BootMae/stage-0.bin")!;
            byte[] weights;
            using (var s = entry.Open())
            using (var copy = new MemoryStream())
            {
                s.CopyTo(copy);
                weights = copy.ToArray();
            }

            weights[weights.Length - 3] ^= 0x40;
            entry.Delete();
            using var w = zip.CreateEntry("BootMae/stage-0.bin", CompressionLevel.NoCompression).Open();
            w.Write(weights);
        }

        var ex = Assert.ThrowsExactly<InvalidDataException>(() => ml.Model.LoadBootMae(path, out _));
        StringAssert.Contains(ex.Message, "SHA-256");
        StringAssert.Contains(ex.Message, "stage-0.bin");
    }

    [TestMethod]
    public void ModelsWithoutBootMaeStagesRoundTrip()
    {
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { ("a", "x"), ("b", "y") });
        var model = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows);
        using var stream = new MemoryStream();
        ml.Model.SaveBootMae(model, rows.Schema, stream);
        stream.Position = 0;
        var loaded = ml.Model.LoadBootMae(stream, out _);
        Assert.IsNotNull(loaded.Transform(rows).Schema["Label"].Type as KeyDataViewType);
    }
}
