using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Consumers that read a featurized view many times (SDCA reads it twice per iteration) must not run the encoder on
/// every pass: counted with the transformer's forward-pass counter.
/// </summary>
[TestClass]
public sealed class MultiPassConsumerTests
{
    private const int Rows = 20;
    private const int Batch = 4;
    private const int BatchesPerPass = Rows / Batch;

    private static (TransformerChain<ITransformer> Model, BootMaeEncoderTransformer Featurizer, IDataView Input) Featurize(
        MLContext ml, MlNetTestData files, BootMaeEncoder encoder, IDataView? rows = null)
    {
        rows ??= files.ColourRows(ml, Rows);
        var model = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, BatchSize = Batch }))
            .Fit(rows);
        var chain = new TransformerChain<ITransformer>(model.ToArray());
        return (chain, (BootMaeEncoderTransformer)model.LastTransformer, model.First().Transform(rows));
    }

    private static float[][] Features(IDataView scored)
    {
        var result = new List<float[]>();
        using var cursor = scored.GetRowCursor(new[] { scored.Schema["Features"] });
        var getter = cursor.GetGetter<VBuffer<float>>(scored.Schema["Features"]);
        VBuffer<float> value = default;
        while (cursor.MoveNext())
        {
            getter(ref value);
            result.Add(value.DenseValues().ToArray());
        }

        return result.ToArray();
    }

    private static void AssertSame(float[][] expected, float[][] actual, string what)
    {
        Assert.HasCount(expected.Length, actual, what);
        for (int i = 0; i < expected.Length; i++)
        {
            CollectionAssert.AreEqual(expected[i], actual[i], $"{what}: row {i}");
        }
    }

    [TestMethod]
    public void SdcaOnTheUncachedViewRunsTheEncoderOncePerBatch()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var (ml, messages) = LoggingContext();
        var (model, featurizer, _) = Featurize(ml, files, encoder);
        var rows = files.ColourRows(ml, Rows);
        var scored = model.Transform(rows);
        // 10 iterations: SDCA reads the data about 23 times (its preprocessing passes, then a training pass and a
        // convergence check per iteration); each pass used to run all 5 batches through the encoder.
        var sdca = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features", maximumNumberOfIterations: 10));
        var fitted = sdca.Fit(scored);
        Assert.AreEqual(BatchesPerPass, featurizer.ForwardPasses, "one featurization for the whole fit");
        Assert.AreEqual(Rows, featurizer.ImagesScored);

        // The reused scores are the encoder's: a fresh view (its own first pass) gives the same bits.
        AssertSame(Features(model.Transform(rows)), Features(scored), "reused against fresh");
        var metrics = ml.MulticlassClassification.Evaluate(fitted.Transform(scored));
        Assert.IsGreaterThan(0.0, metrics.MicroAccuracy);
        lock (messages)
        {
            Assert.IsTrue(messages.Any(m => m.Contains("BootMaeFeaturize", StringComparison.Ordinal) && m.Contains("AppendCacheCheckpoint", StringComparison.Ordinal)),
                "the featurizer's log steers multi-pass consumers to AppendCacheCheckpoint:\n" + string.Join("\n", messages.Where(m => m.Contains("BootMae", StringComparison.Ordinal))));
        }
    }

    [TestMethod]
    public void ParallelAndInterleavedCursorsShareBatches()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var (model, featurizer, _) = Featurize(ml, files, encoder);
        var rows = files.ColourRows(ml, Rows);
        var expected = Features(model.Transform(rows));
        long before = featurizer.ForwardPasses;

        // Two cursors advanced in turn on one thread: each batch is scored by whichever cursor reaches it first.
        var scored = model.Transform(rows);
        var column = scored.Schema["Features"];
        using (var a = scored.GetRowCursor(new[] { column }))
        using (var b = scored.GetRowCursorSet(new[] { column }, 2)[0])
        {
            var getA = a.GetGetter<VBuffer<float>>(column);
            var getB = b.GetGetter<VBuffer<float>>(column);
            VBuffer<float> value = default;
            for (int i = 0; i < Rows; i++)
            {
                Assert.IsTrue(a.MoveNext() && b.MoveNext());
                getA(ref value);
                CollectionAssert.AreEqual(expected[i], value.DenseValues().ToArray(), $"cursor a, row {i}");
                getB(ref value);
                CollectionAssert.AreEqual(expected[i], value.DenseValues().ToArray(), $"cursor b, row {i}");
            }

            Assert.IsFalse(a.MoveNext() || b.MoveNext());
        }

        Assert.AreEqual(BatchesPerPass, featurizer.ForwardPasses - before, "interleaved cursors");

        // Four cursors on four threads over a new view.
        before = featurizer.ForwardPasses;
        var parallelView = model.Transform(rows);
        var results = new float[4][][];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i => results[i] = Features(parallelView));
        for (int i = 0; i < 4; i++)
        {
            AssertSame(expected, results[i], $"thread {i}");
        }

        Assert.AreEqual(BatchesPerPass, featurizer.ForwardPasses - before, "parallel cursors");
    }

    [TestMethod]
    public void BeyondTheBudgetEachPassScoresAgainAndWarns()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var (ml, messages) = LoggingContext();
        var (model, featurizer, images) = Featurize(ml, files, encoder);
        var expected = Features(model.Transform(files.ColourRows(ml, Rows)));
        long before = featurizer.ForwardPasses;

        // Room for two batches of 4 rows × 16 floats: the other three are scored on each of the three passes.
        var scored = new BatchScoredDataView(images, featurizer) { KeptScoresBudgetBytes = 2 * Batch * 16 * sizeof(float) };
        for (int pass = 0; pass < 3; pass++)
        {
            AssertSame(expected, Features(scored), $"pass {pass}");
        }

        Assert.AreEqual(BatchesPerPass + (2 * (BatchesPerPass - 2)), featurizer.ForwardPasses - before);
        lock (messages)
        {
            Assert.IsTrue(messages.Any(m => m.Contains("exceed", StringComparison.Ordinal) && m.Contains("AppendCacheCheckpoint", StringComparison.Ordinal)),
                string.Join("\n", messages.Where(m => m.Contains("BootMae", StringComparison.Ordinal))));
        }
    }

    [TestMethod]
    public void AnUndecodableImageFailsEveryPass()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 4);
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, Enumerable.Range(0, 6).Select(i => (i == 5 ? files.WriteBad("broken.png") : files.WriteColour($"c{i}.png"), "a")));
        var (model, featurizer, _) = Featurize(ml, files, encoder, rows);
        var scored = model.Transform(rows);
        for (int pass = 0; pass < 2; pass++)
        {
            var ex = Assert.ThrowsExactly<InvalidDataException>(() => Features(scored), $"pass {pass}");
            StringAssert.Contains(ex.Message, "broken.png");
        }

        // The good first batch is encoded once and kept; the failing one is decoded again on each pass, never kept.
        Assert.AreEqual(1, featurizer.ForwardPasses);
    }

    // An MLContext whose log messages (from any thread) are collected.
    private static (MLContext Ml, List<string> Messages) LoggingContext()
    {
        var ml = new MLContext(1);
        var messages = new List<string>();
        ml.Log += (_, e) =>
        {
            lock (messages)
            {
                messages.Add(e.Message);
            }
        };
        return (ml, messages);
    }
}
