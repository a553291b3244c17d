using Microsoft.ML.BootMae.Visualization;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class BootMaePicturesTests
{
    private const int Side = 28;
    private const int Patch = 4;
    private const int Grid = Side / Patch;
    private string directory = string.Empty;

    [TestInitialize]
    public void CreateDirectory()
    {
        directory = Path.Combine(Path.GetTempPath(), "bootmae-pictures-" + Guid.NewGuid().ToString("N"));
    }

    [TestCleanup]
    public void DeleteDirectory()
    {
        if (Directory.Exists(directory))
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [TestMethod]
    public void ReconstructionGridDrawsTilesAndGreyMask()
    {
        var (images, _) = Images(4);
        var masks = images.Select((_, i) => RandomMask(i, 0.75)).ToArray();
        masks[0][0] = true;
        masks[0][Grid * Grid - 1] = false;
        var reconstructions = images.Select(PatchMeans).ToArray();

        var path = BootMaePictures.ReconstructionGrid(images, masks, reconstructions, 1, Side, Side, Patch, Path.Combine(directory, "sub", "recon.png"), tileSize: 224);

        using var bitmap = Decode(path, expectedHeight: 20 + 25 + (4 * 224) + (3 * 12) + 20);
        Assert.IsGreaterThanOrEqualTo((4 * 224) + (3 * 12) + 40, bitmap.Width);

        // Tiles start at x = 20 + column * (224 + 12), y = 45; each source pixel is 8 × 8 on screen.
        Assert.AreEqual(new SKColor(0x80, 0x80, 0x80), bitmap.GetPixel(20 + 236 + 10, 45 + 10), "masked patch must be grey");
        var last = (Side * Side) - 1;
        Assert.AreEqual(Grey(images[0][last]), bitmap.GetPixel(20 + 236 + 223 - 3, 45 + 223 - 3), "visible patch must show the image");
        Assert.AreEqual(Grey(images[0][0]), bitmap.GetPixel(20 + 3, 45 + 3), "original column shows the image");
        Assert.AreEqual(Grey(reconstructions[0][0]), bitmap.GetPixel(20 + (2 * 236) + 3, 45 + 3), "reconstruction column");
        Assert.AreEqual(Grey(reconstructions[0][0]), bitmap.GetPixel(20 + (3 * 236) + 3, 45 + 3), "masked patch pasted from the reconstruction");
        Assert.AreEqual(Grey(images[0][last]), bitmap.GetPixel(20 + (3 * 236) + 220, 45 + 220), "visible patch pasted from the original");
    }

    [TestMethod]
    public void ReconstructionGridWithTitleLabelsAndRgb()
    {
        var rgb = Enumerable.Range(0, 2).Select(i => Enumerable.Range(0, 3 * 16 * 16).Select(j => ((j * 7) + i) % 256 / 255f).ToArray()).ToArray();
        var masks = rgb.Select(_ => Enumerable.Range(0, 16).Select(j => j % 3 == 0).ToArray()).ToArray();

        var path = BootMaePictures.ReconstructionGrid(rgb, masks, rgb, 3, 16, 16, 4, Path.Combine(directory, "rgb.png"), "Colour", ["first", "second"]);

        // 16 px images zoom × 7 to 112 px.
        using var bitmap = Decode(path, expectedHeight: 20 + 34 + 25 + (2 * 112) + 12 + 20);
        Assert.IsGreaterThan(50, DistinctColours(bitmap));
    }

    [TestMethod]
    public void MaskComparisonDrawsBothMasks()
    {
        var (images, labels) = Images(3);
        var random = images.Select((_, i) => RandomMask(i, 0.75)).ToArray();
        var block = images.Select((_, i) => BlockMask(i)).ToArray();

        var path = BootMaePictures.MaskComparison(images, random, block, 1, Side, Side, Patch, Path.Combine(directory, "masks.png"), "Random vs block-wise", labels);

        // 28 px images zoom × 4 to 112 px.
        using var bitmap = Decode(path, expectedHeight: 20 + 34 + 25 + (3 * 112) + (2 * 12) + 20);
        Assert.IsGreaterThan(3 * 112, bitmap.Width);
        Assert.IsGreaterThan(20, DistinctColours(bitmap));
    }

    [TestMethod]
    public void TrainingCurvesDrawsThreeCharts()
    {
        var path = BootMaePictures.TrainingCurves(Curve(400), Path.Combine(directory, "curves.png"), "BootMAE pretraining");

        using var bitmap = Decode(path, expectedHeight: 20 + 34 + 380 + 20);
        Assert.AreEqual(20 + (3 * 500) + (2 * 12) + 20, bitmap.Width);
        Assert.IsGreaterThan(20, DistinctColours(bitmap));

        // The curves' own colours appear: pixel loss (blue), learning rate (green), EMA momentum (purple).
        var colours = Colours(bitmap);
        Assert.Contains(new SKColor(0x1F, 0x77, 0xB4), colours);
        Assert.Contains(new SKColor(0x2C, 0xA0, 0x2C), colours);
        Assert.Contains(new SKColor(0x94, 0x67, 0xBD), colours);
    }

    [TestMethod]
    public void TrainingCurvesCopesWithOnePointAndMissingValues()
    {
        var path = BootMaePictures.TrainingCurves([new TrainingCurvePoint(0, 1.5, 1.5, double.NaN, 0, 0.996)], Path.Combine(directory, "one.png"));

        using var bitmap = Decode(path, expectedHeight: 20 + 380 + 20);
        Assert.IsGreaterThan(10, DistinctColours(bitmap));
    }

    [TestMethod]
    public void ArchitectureOverloadsDrawWhatTheLongFormsDraw()
    {
        // The short forms take the geometry from an architecture and the layout from BootMaePictureOptions.
        var (images, labels) = Images(2);
        var masks = images.Select((_, i) => RandomMask(i, 0.5)).ToArray();
        var architecture = new BootMaeArchitecture { ImageSize = Side, PatchSize = Patch, Channels = 1, EmbedDim = 16, Depth = 1, Heads = 1 };
        var options = new BootMaePictureOptions { Title = "short", RowLabels = labels, TileSize = 64 };

        var shortGrid = BootMaePictures.ReconstructionGrid(images, masks, images, architecture, Path.Combine(directory, "short-grid.png"), options);
        var longGrid = BootMaePictures.ReconstructionGrid(images, masks, images, 1, Side, Side, Patch, Path.Combine(directory, "long-grid.png"), "short", labels, 64);
        CollectionAssert.AreEqual(File.ReadAllBytes(longGrid), File.ReadAllBytes(shortGrid));
        var shortMasks = BootMaePictures.MaskComparison(images, masks, masks, architecture, Path.Combine(directory, "short-masks.png"));
        var longMasks = BootMaePictures.MaskComparison(images, masks, masks, 1, Side, Side, Patch, Path.Combine(directory, "long-masks.png"));
        CollectionAssert.AreEqual(File.ReadAllBytes(longMasks), File.ReadAllBytes(shortMasks));
        var wrong = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.MaskComparison(images, masks, masks, architecture with { PatchSize = Side }, Path.Combine(directory, "x.png")));
        Assert.AreEqual("randomMasks", wrong.ParamName, "masks of another grid are refused");
    }

    [TestMethod]
    public void CurvesFromReportsUseTheMeanSinceThePreviousReport()
    {
        // Reports hold epoch-to-date means; a point is the mean of the steps since the previous report of its epoch.
        static BootMaeTrainingMetrics M(long step, float loss, bool end = false, BootMaeDataset dataset = BootMaeDataset.Train) =>
            new() { Step = step, Loss = loss, PixelLoss = loss, IsEpochEnd = end, TotalSteps = 20, Dataset = dataset, LearningRate = step, EmaMomentum = 0.99 };
        var reports = new[] { M(5, 2.0f), M(10, 1.5f), M(12, 1.4f, end: true), M(12, 9f, end: true, BootMaeDataset.Validation), M(17, 0.8f), M(20, 0.7f, end: true) };

        var points = TrainingCurvePoint.FromReports(reports);

        CollectionAssert.AreEqual(new long[] { 5, 10, 12, 17, 20 }, points.Select(p => p.Step).ToArray(), "validation reports are left out");
        // (1.5·10 − 2·5) / 5 = 1; (1.4·12 − 1.5·10) / 2 = 0.9; the next epoch starts afresh; (0.7·8 − 0.8·5) / 3 = 0.5333.
        CollectionAssert.AreEqual(new[] { 2.0, 1.0, 0.9, 0.8, 0.53333 }, points.Select(p => Math.Round(p.TotalLoss, 5)).ToArray());
        Assert.IsTrue(points.All(p => double.IsNaN(p.FeatureLoss) && p.EmaMomentum == 0.99 && p.LearningRate == p.Step), "missing values are NaN, others copied");
        var epochsOnly = TrainingCurvePoint.FromReports([M(12, 1.4f, end: true), M(24, 1.1f, end: true)]);
        CollectionAssert.AreEqual(new[] { 1.4, 1.1 }, epochsOnly.Select(p => Math.Round(p.TotalLoss, 5)).ToArray(), "without step reports, one point per epoch");

        var path = BootMaePictures.TrainingCurves(reports, Path.Combine(directory, "reports.png"), "from reports");
        using var bitmap = Decode(path, expectedHeight: 20 + 34 + 380 + 20);
        Assert.Contains(new SKColor(0x1F, 0x77, 0xB4), Colours(bitmap));
        var none = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.TrainingCurves([M(3, 1f, dataset: BootMaeDataset.Validation)], path));
        Assert.AreEqual("reports", none.ParamName);
    }

    [TestMethod]
    public void BadArgumentsAreRejected()
    {
        var (images, _) = Images(2);
        var masks = images.Select((_, i) => RandomMask(i, 0.5)).ToArray();
        var file = Path.Combine(directory, "bad.png");

        var count = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.ReconstructionGrid(images, masks.Take(1).ToArray(), images, 1, Side, Side, Patch, file));
        Assert.AreEqual("masks", count.ParamName);
        var length = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.MaskComparison(images, masks, [new bool[3], new bool[3]], 1, Side, Side, Patch, file));
        Assert.AreEqual("blockMasks", length.ParamName);
        var patch = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => BootMaePictures.MaskComparison(images, masks, masks, 1, Side, Side, 5, file));
        Assert.AreEqual("patchSize", patch.ParamName);
        var channels = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => BootMaePictures.ReconstructionGrid(images, masks, images, 2, Side, Side, Patch, file));
        Assert.AreEqual("channels", channels.ParamName);
        var empty = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.TrainingCurves(Array.Empty<TrainingCurvePoint>(), file));
        Assert.AreEqual("points", empty.ParamName);
        var blank = Assert.ThrowsExactly<ArgumentException>(() => BootMaePictures.TrainingCurves(Curve(3), " "));
        Assert.AreEqual("path", blank.ParamName);
        Assert.IsFalse(File.Exists(file));
    }

    internal static (float[][] Images, string[] Labels) Images(int count)
    {
        var data = FashionMnistSample.LoadArrays(trainPerClass: 1, testPerClass: 0).Train;
        return (
            Enumerable.Range(0, count).Select(data.GetImage).ToArray(),
            Enumerable.Range(0, count).Select(i => FashionMnistSample.ClassNames[data.Labels[i]]).ToArray());
    }

    internal static bool[] RandomMask(int seed, double ratio)
    {
        var random = new Random(seed);
        var order = Enumerable.Range(0, Grid * Grid).OrderBy(_ => random.Next()).ToArray();
        var mask = new bool[Grid * Grid];
        foreach (var i in order.Take((int)Math.Round(ratio * mask.Length)))
        {
            mask[i] = true;
        }

        return mask;
    }

    internal static bool[] BlockMask(int seed)
    {
        // Two rectangles of patches, as BEiT-style block-wise masking produces.
        var random = new Random(seed);
        var mask = new bool[Grid * Grid];
        for (var block = 0; block < 2; block++)
        {
            int h = random.Next(2, 5), w = random.Next(2, 5), top = random.Next(0, Grid - h + 1), left = random.Next(0, Grid - w + 1);
            for (var y = top; y < top + h; y++)
            {
                for (var x = left; x < left + w; x++)
                {
                    mask[(y * Grid) + x] = true;
                }
            }
        }

        return mask;
    }

    /// <summary>A blurry stand-in for a reconstruction: every patch replaced by its mean.</summary>
    internal static float[] PatchMeans(float[] image)
    {
        var result = new float[image.Length];
        for (var py = 0; py < Grid; py++)
        {
            for (var px = 0; px < Grid; px++)
            {
                var pixels = Enumerable.Range(0, Patch * Patch).Select(k => (((py * Patch) + (k / Patch)) * Side) + (px * Patch) + (k % Patch)).ToArray();
                var mean = pixels.Average(i => image[i]);
                foreach (var i in pixels)
                {
                    result[i] = mean;
                }
            }
        }

        return result;
    }

    internal static TrainingCurvePoint[] Curve(int steps) => Enumerable.Range(0, steps).Select(s =>
    {
        var t = (double)s / Math.Max(1, steps - 1);
        var pixel = 0.25 + (0.8 * Math.Exp(-5 * t)) + (0.02 * Math.Sin(s * 0.7));
        var feature = 0.1 + (0.5 * Math.Exp(-3 * t)) + (0.015 * Math.Cos(s * 1.3));
        var warmup = Math.Min(1.0, t / 0.1);
        var lr = 1.5e-4 * warmup * (t < 0.1 ? 1 : 0.5 * (1 + Math.Cos(Math.PI * (t - 0.1) / 0.9)));
        var ema = 1 - ((1 - 0.996) * (Math.Cos(Math.PI * t) + 1) / 2);
        return new TrainingCurvePoint(s * 25, pixel + feature, pixel, feature, lr, ema);
    }).ToArray();

    private static SKBitmap Decode(string path, int expectedHeight)
    {
        Assert.IsTrue(File.Exists(path), path);
        var bytes = File.ReadAllBytes(path);
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes.Take(4).ToArray(), "PNG signature");
        var bitmap = SKBitmap.Decode(bytes);
        Assert.IsNotNull(bitmap, "the file must decode");
        Assert.AreEqual(expectedHeight, bitmap.Height);
        return bitmap;
    }

    private static SKColor Grey(float value)
    {
        var level = (byte)MathF.Round(value * 255f);
        return new SKColor(level, level, level);
    }

    private static HashSet<SKColor> Colours(SKBitmap bitmap) => [.. bitmap.Pixels];

    private static int DistinctColours(SKBitmap bitmap) => Colours(bitmap).Count;
}
