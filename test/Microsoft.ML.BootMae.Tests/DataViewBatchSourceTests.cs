using Microsoft.ML.BootMae.DataViews;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class DataViewBatchSourceTests
{
    private static (IDataView Data, ImageColumnInfo Image) Load(MLContext ml, MlNetTestData files, IDataView rows)
    {
        var data = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Fit(rows).Transform(rows);
        return (data, ImageColumn.Resolve(data.Schema, "Image"));
    }

    [TestMethod]
    public void BatchesCoverEveryRowWithZeroBasedLabels()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var (data, image) = Load(ml, files, files.ColourRows(ml, 10));
        var source = new DataViewImageBatchSource(data, image, "Label", MlNetTestData.Tiny8, augmentation: null, seed: 1,
            shuffle: false, skipBadImages: false, rowCount: null, log: null);
        Assert.AreEqual(10L, source.Count);
        var batches = source.ReadEpoch(0, 4, CancellationToken.None).ToList();
        CollectionAssert.AreEqual(new[] { 4, 4, 2 }, batches.Select(b => b.Count).ToArray());
        var labels = batches.SelectMany(b => b.Labels!).ToArray();
        CollectionAssert.AreEqual(Enumerable.Range(0, 10).Select(i => i % 3).ToArray(), labels);
        Assert.AreEqual(4 * 192, batches[0].Pixels.Length);

        // Row 1 without shuffling: red is ColourR + 1 (the shift), so its first value is (1 + 1) / 255.
        Assert.AreEqual(2f / 255f, batches[0].Pixels[192], 1e-6f);
    }

    [TestMethod]
    public void ShuffledEpochsAreDeterministicPerSeedAndDifferPerEpoch()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var (data, image) = Load(ml, files, files.ColourRows(ml, 12));
        DataViewImageBatchSource Make() => new(data, image, "Label", MlNetTestData.Tiny8, new ImageAugmentation(0.5), seed: 7,
            shuffle: true, skipBadImages: false, rowCount: null, log: null);
        var first = Make().ReadEpoch(0, 5, CancellationToken.None).SelectMany(b => b.Pixels).ToArray();
        var again = Make().ReadEpoch(0, 5, CancellationToken.None).SelectMany(b => b.Pixels).ToArray();
        var next = Make().ReadEpoch(1, 5, CancellationToken.None).SelectMany(b => b.Pixels).ToArray();
        CollectionAssert.AreEqual(first, again);
        Assert.IsFalse(first.SequenceEqual(next), "epoch 1 should reshuffle and re-augment");
    }

    [TestMethod]
    public void MissingLabelsAreSkippedAndCounted()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("a.png"), "a"), (files.WriteColour("b.png"), "b"), (files.WriteColour("c.png"), "c") });
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label", keyData: ml.Data.LoadFromEnumerable(new[] { new LabelOnly { Label = "a" }, new LabelOnly { Label = "b" } }))
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Fit(rows).Transform(rows);
        var lines = new List<string>();
        using var log = new BootMaeLogger(null, "test", lines.Add);
        var source = new DataViewImageBatchSource(keyed, ImageColumn.Resolve(keyed.Schema, "Image"), "Label", MlNetTestData.Tiny8,
            null, 1, shuffle: false, skipBadImages: false, rowCount: null, log);
        var batches = source.ReadEpoch(0, 8, CancellationToken.None).ToList();
        Assert.AreEqual(2, batches.Sum(b => b.Count));
        Assert.AreEqual(1L, source.MissingLabelsSkipped);
        Assert.IsTrue(lines.Any(l => l.Contains("missing", StringComparison.Ordinal)), string.Join("\n", lines));
    }

    [TestMethod]
    public void BadImagesFailWithTheirPath()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("a.png"), "a"), (files.WriteBad("broken.png"), "b") });
        var (data, image) = Load(ml, files, rows);
        var source = new DataViewImageBatchSource(data, image, "Label", MlNetTestData.Tiny8, null, 1, shuffle: false, skipBadImages: false, rowCount: null, log: null);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => source.ReadEpoch(0, 4, CancellationToken.None).ToList());
        StringAssert.Contains(ex.Message, "broken.png");
        StringAssert.Contains(ex.Message, "SkipBadImages");
    }

    [TestMethod]
    public void BadImagesAreSkippedAndCountedWhenAsked()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[]
        {
            (files.WriteColour("a.png"), "a"), (files.WriteBad("broken.png"), "b"), (files.WriteColour("c.png"), "c"), ("missing.png", "a"),
        });
        var (data, image) = Load(ml, files, rows);
        var source = new DataViewImageBatchSource(data, image, "Label", MlNetTestData.Tiny8, null, 1, shuffle: false, skipBadImages: true, rowCount: null, log: null);
        var batches = source.ReadEpoch(0, 3, CancellationToken.None).ToList();
        Assert.AreEqual(2, batches.Sum(b => b.Count));
        CollectionAssert.AreEqual(new[] { 0, 2 }, batches.SelectMany(b => b.Labels!).ToArray());
        Assert.AreEqual(2L, source.BadImagesSkipped);
    }

    [TestMethod]
    public void StoppingEarlyEndsTheProducer()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var (data, image) = Load(ml, files, files.ColourRows(ml, 20));
        var source = new DataViewImageBatchSource(data, image, null, MlNetTestData.Tiny8, null, 1, shuffle: false, skipBadImages: false, rowCount: null, log: null);
        var first = source.ReadEpoch(0, 2, CancellationToken.None).First();
        Assert.AreEqual(2, first.Count);
        Assert.IsNull(first.Labels);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => source.ReadEpoch(0, 2, cts.Token).ToList());
    }

    private sealed class LabelOnly
    {
        public string Label { get; set; } = string.Empty;
    }
}
