using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class FeaturizationPipelineTests
{
    private static float[][] Features(IDataView scored, string column = "Features")
    {
        var result = new List<float[]>();
        using var cursor = scored.GetRowCursor(new[] { scored.Schema[column] });
        var getter = cursor.GetGetter<VBuffer<float>>(scored.Schema[column]);
        VBuffer<float> value = default;
        while (cursor.MoveNext())
        {
            getter(ref value);
            result.Add(value.DenseValues().ToArray());
        }

        return result.ToArray();
    }

    [TestMethod]
    public void BatchedTransformMatchesTheEncoderAndPredictionEngine()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 7);
        var pipeline = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, BatchSize = 3 }));
        using var model = pipeline.Fit(rows);
        var scored = model.Transform(rows);
        var column = scored.Schema["Features"];
        Assert.AreEqual(new VectorDataViewType(NumberDataViewType.Single, 16), column.Type);
        var batched = Features(scored);
        Assert.HasCount(7, batched);

        // Pass-through columns stay aligned with the batched features.
        var paths = scored.GetColumn<string>("ImagePath").ToArray();
        CollectionAssert.AreEqual(Enumerable.Range(0, 7).Select(i => $"c{i}.png").ToArray(), paths);

        using var engine = ml.Model.CreatePredictionEngine<MlNetTestData.PathOnly, MlNetTestData.FeaturesOut>(model);
        for (int i = 0; i < 7; i++)
        {
            var single = engine.Predict(new MlNetTestData.PathOnly { ImagePath = $"c{i}.png" }).Features;
            // A batch of one may round differently from a batch of three in the last bits.
            for (int d = 0; d < single.Length; d++)
            {
                Assert.AreEqual(batched[i][d], single[d], 1e-4f, $"row {i} slot {d}");
            }
        }
    }

    [TestMethod]
    public void TokensPoolingGivesAMatrixColumn()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 2);
        using var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaeFeaturize(encoder, pooling: BootMaePooling.Tokens)).Fit(rows);
        var scored = model.Transform(rows);
        Assert.AreEqual(new VectorDataViewType(NumberDataViewType.Single, 4, 16), scored.Schema["Features"].Type);
        Assert.HasCount(64, Features(scored)[0]);
    }

    [TestMethod]
    public void ConcurrentPredictionEnginesAgree()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 5);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 6);
        using var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(rows);
        var expected = Features(model.Transform(rows));
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, worker =>
        {
            // PredictionEngine disposes the model it owns; these engines share one.
            using var engine = ml.Model.CreatePredictionEngine<MlNetTestData.PathOnly, MlNetTestData.FeaturesOut>(model, new PredictionEngineOptions { OwnsTransformer = false });
            for (int round = 0; round < 3; round++)
            {
                for (int i = 0; i < 6; i++)
                {
                    var got = engine.Predict(new MlNetTestData.PathOnly { ImagePath = $"c{i}.png" }).Features;
                    if (got.Zip(expected[i]).Any(p => Math.Abs(p.First - p.Second) > 1e-4f))
                    {
                        failures.Add($"worker {worker} row {i}");
                    }
                }
            }
        });
        Assert.IsEmpty(failures, string.Join(", ", failures));
    }

    [TestMethod]
    public void UndecodableImageInTransformNamesTheFile()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("ok.png"), "a"), (files.WriteBad("broken.png"), "b") });
        using var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(rows);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => Features(model.Transform(rows)));
        StringAssert.Contains(ex.Message, "broken.png");
    }

    [TestMethod]
    public void EncoderStaysTheCallersAfterDispose()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 1);
        var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(rows);
        model.Dispose();
        var embedding = encoder.Embed(new float[192], 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32);
        Assert.HasCount(16, embedding);
    }
}
