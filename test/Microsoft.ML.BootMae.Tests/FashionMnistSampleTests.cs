using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class FashionMnistSampleTests
{
    private string directory = string.Empty;

    [TestInitialize]
    public void CreateDirectory()
    {
        directory = Path.Combine(Path.GetTempPath(), "bootmae-fmnist-" + Guid.NewGuid().ToString("N"));
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
    public void LoadArraysGivesBalancedFullSplits()
    {
        var data = FashionMnistSample.LoadArrays();

        Assert.AreEqual(10_000, data.Train.Count);
        Assert.AreEqual(2_000, data.Test.Count);
        Assert.AreEqual(10_000 * 28 * 28, data.Train.Pixels.Length);
        Assert.AreEqual(2_000 * 28 * 28, data.Test.Pixels.Length);
        CollectionAssert.AreEqual(Enumerable.Repeat(1000, 10).ToArray(), CountPerClass(data.Train.Labels));
        CollectionAssert.AreEqual(Enumerable.Repeat(200, 10).ToArray(), CountPerClass(data.Test.Labels));
        CollectionAssert.AreEqual(Enumerable.Range(0, 10_000).ToArray(), data.Train.Indices);

        // Source indices rise strictly: the subset keeps the original file order.
        Assert.IsTrue(data.Train.SourceIndices.Zip(data.Train.SourceIndices.Skip(1)).All(p => p.First < p.Second));
        Assert.IsTrue(data.Test.SourceIndices.Zip(data.Test.SourceIndices.Skip(1)).All(p => p.First < p.Second));

        // Real images, not zeros: Fashion-MNIST has ink in every image and many grey levels.
        Assert.IsGreaterThan(200, data.Train.Pixels.Distinct().Count());
        Assert.IsGreaterThan(0, data.Test.Pixels.AsSpan(0, 784).ToArray().Max());
    }

    [TestMethod]
    public void LoadArraysSubsetTakesFirstImagesOfEachClass()
    {
        var full = FashionMnistSample.LoadArrays();
        var subset = FashionMnistSample.LoadArrays(trainPerClass: 5, testPerClass: 3);

        Assert.AreEqual(50, subset.Train.Count);
        Assert.AreEqual(30, subset.Test.Count);
        CollectionAssert.AreEqual(Enumerable.Repeat(5, 10).ToArray(), CountPerClass(subset.Train.Labels));
        CollectionAssert.AreEqual(Enumerable.Repeat(3, 10).ToArray(), CountPerClass(subset.Test.Labels));
        for (var i = 0; i < subset.Train.Count; i++)
        {
            var index = subset.Train.Indices[i];
            Assert.AreEqual(full.Train.Labels[index], subset.Train.Labels[i]);
            Assert.AreEqual(full.Train.SourceIndices[index], subset.Train.SourceIndices[i]);
            CollectionAssert.AreEqual(
                full.Train.Pixels.AsSpan(index * 784, 784).ToArray(),
                subset.Train.Pixels.AsSpan(i * 784, 784).ToArray());
        }

        var image = subset.Test.GetImage(7);
        Assert.HasCount(784, image);
        Assert.AreEqual(subset.Test.Pixels[(7 * 784) + 400] / 255f, image[400]);
    }

    [TestMethod]
    public void MaterializeWritesBalancedTsvAndPngFiles()
    {
        var files = FashionMnistSample.Materialize(directory, trainPerClass: 4, testPerClass: 2);

        Assert.AreEqual(Path.GetFullPath(directory), files.Directory);
        Assert.AreEqual(40, files.TrainCount);
        Assert.AreEqual(20, files.TestCount);
        CollectionAssert.AreEqual(FashionMnistSample.ClassNames.ToArray(), files.ClassNames.ToArray());
        Assert.HasCount(40, Directory.GetFiles(files.TrainImageFolder, "*.png"));
        Assert.HasCount(20, Directory.GetFiles(files.TestImageFolder, "*.png"));

        var lines = File.ReadAllLines(files.TrainTsvPath);
        Assert.AreEqual("ImagePath\tLabel", lines[0]);
        Assert.HasCount(41, lines);
        var rows = lines.Skip(1).Select(l => l.Split('\t')).ToArray();
        foreach (var row in rows)
        {
            Assert.IsTrue(File.Exists(Path.Combine(files.Directory, row[0])), row[0]);
        }

        var perName = rows.GroupBy(r => r[1]).ToDictionary(g => g.Key, g => g.Count());
        CollectionAssert.AreEquivalent(FashionMnistSample.ClassNames.ToArray(), perName.Keys.ToArray());
        Assert.IsTrue(perName.Values.All(c => c == 4));
    }

    [TestMethod]
    public void MaterializeIsIdempotentAndSubsetsShareFiles()
    {
        var small = FashionMnistSample.Materialize(directory, trainPerClass: 2, testPerClass: 1);
        var png = Path.Combine(small.Directory, File.ReadAllLines(small.TrainTsvPath)[1].Split('\t')[0]);
        var written = File.GetLastWriteTimeUtc(png);
        var bytes = File.ReadAllBytes(png);

        var larger = FashionMnistSample.Materialize(directory, trainPerClass: 3, testPerClass: 1);

        Assert.AreEqual(30, larger.TrainCount);
        Assert.AreEqual(written, File.GetLastWriteTimeUtc(png), "an unchanged file must not be rewritten");
        CollectionAssert.AreEqual(bytes, File.ReadAllBytes(png));
        Assert.HasCount(30, Directory.GetFiles(larger.TrainImageFolder, "*.png"));
        Assert.HasCount(31, File.ReadAllLines(larger.TrainTsvPath));
        Assert.IsEmpty(Directory.GetFiles(directory, "*.tmp", SearchOption.AllDirectories));
    }

    [TestMethod]
    public void MaterializeAllImages()
    {
        var files = FashionMnistSample.Materialize(directory);

        Assert.AreEqual(10_000, files.TrainCount);
        Assert.AreEqual(2_000, files.TestCount);
        Assert.HasCount(10_000, Directory.GetFiles(files.TrainImageFolder, "*.png"));
        Assert.HasCount(2_000, Directory.GetFiles(files.TestImageFolder, "*.png"));
        Assert.HasCount(2_001, File.ReadAllLines(files.TestTsvPath));
    }

    [TestMethod]
    public void PngFilesRoundTripThroughLoadImages()
    {
        var files = FashionMnistSample.Materialize(directory, trainPerClass: 1, testPerClass: 2);
        var expected = FashionMnistSample.LoadArrays(trainPerClass: 1, testPerClass: 2).Test;
        var ml = new MLContext(seed: 1);

        var text = ml.Data.LoadFromTextFile<TsvRow>(files.TestTsvPath, separatorChar: '\t', hasHeader: true);
        var images = ml.Transforms.LoadImages("Image", files.Directory, nameof(TsvRow.ImagePath)).Fit(text).Transform(text);
        var checkedRows = 0;
        using (var cursor = images.GetRowCursor(images.Schema))
        {
            var getLabel = cursor.GetGetter<ReadOnlyMemory<char>>(images.Schema["Label"]);
            var getImage = cursor.GetGetter<MLImage>(images.Schema["Image"]);
            ReadOnlyMemory<char> label = default;
            MLImage image = null!;
            for (var i = 0; cursor.MoveNext(); i++)
            {
                getLabel(ref label);
                getImage(ref image);
                Assert.AreEqual(FashionMnistSample.ClassNames[expected.Labels[i]], label.ToString());
                Assert.AreEqual(28, image.Width);
                Assert.AreEqual(28, image.Height);
                var bgra = image.PixelFormat == MLPixelFormat.Bgra32;
                Assert.IsTrue(bgra || image.PixelFormat == MLPixelFormat.Rgba32, image.PixelFormat.ToString());
                var pixels = image.Pixels;
                for (var p = 0; p < 784; p++)
                {
                    // Grey, so R, G and B all equal the embedded byte whatever the channel order.
                    var want = expected.Pixels[(i * 784) + p];
                    Assert.AreEqual(want, pixels[(4 * p) + 0], $"image {i} pixel {p}");
                    Assert.AreEqual(want, pixels[(4 * p) + 1], $"image {i} pixel {p}");
                    Assert.AreEqual(want, pixels[(4 * p) + 2], $"image {i} pixel {p}");
                }

                checkedRows++;
            }
        }

        Assert.AreEqual(expected.Count, checkedRows);
    }

    [TestMethod]
    public void PngFilesRoundTripThroughLoadRawImageBytes()
    {
        var files = FashionMnistSample.Materialize(directory, trainPerClass: 2, testPerClass: 0);
        var expected = FashionMnistSample.LoadArrays(trainPerClass: 2, testPerClass: 0).Train;
        var ml = new MLContext(seed: 1);

        var text = ml.Data.LoadFromTextFile<TsvRow>(files.TrainTsvPath, separatorChar: '\t', hasHeader: true);
        var raw = ml.Transforms.LoadRawImageBytes("Bytes", files.Directory, nameof(TsvRow.ImagePath)).Fit(text).Transform(text);
        var rows = ml.Data.CreateEnumerable<BytesRow>(raw, reuseRowObject: false).ToArray();

        Assert.AreEqual(0, files.TestCount);
        Assert.HasCount(20, rows);
        for (var i = 0; i < rows.Length; i++)
        {
            Assert.AreEqual(FashionMnistSample.ClassNames[expected.Labels[i]], rows[i].Label);
            using var bitmap = SKBitmap.Decode(rows[i].Bytes);
            Assert.IsNotNull(bitmap);
            Assert.AreEqual(SKColorType.Gray8, bitmap.ColorType, "PNG files are 8-bit greyscale");
            for (var p = 0; p < 784; p += 13)
            {
                Assert.AreEqual(expected.Pixels[(i * 784) + p], bitmap.GetPixel(p % 28, p / 28).Red, $"image {i} pixel {p}");
            }
        }
    }

    [TestMethod]
    public void BadArgumentsAreRejected()
    {
        Assert.ThrowsExactly<ArgumentException>(() => FashionMnistSample.Materialize(" "));
        var tooMany = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => FashionMnistSample.Materialize(directory, trainPerClass: 1001));
        Assert.AreEqual("trainPerClass", tooMany.ParamName);
        var negative = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => FashionMnistSample.LoadArrays(testPerClass: -1));
        Assert.AreEqual("testPerClass", negative.ParamName);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => FashionMnistSample.LoadArrays().Test.GetImage(2000));
    }

    [TestMethod]
    public void LicenseNoticeNamesSourceAndLicence()
    {
        var notice = FashionMnistSample.LicenseNotice;

        Assert.Contains("Zalando SE", notice);
        Assert.Contains("MIT License", notice);
    }

    private static int[] CountPerClass(byte[] labels)
    {
        var counts = new int[10];
        foreach (var label in labels)
        {
            counts[label]++;
        }

        return counts;
    }

    private sealed class TsvRow
    {
        [LoadColumn(0)]
        public string ImagePath { get; set; } = string.Empty;

        [LoadColumn(1)]
        public string Label { get; set; } = string.Empty;
    }

    private sealed class BytesRow
    {
        public string Label { get; set; } = string.Empty;

        public byte[] Bytes { get; set; } = [];
    }
}
