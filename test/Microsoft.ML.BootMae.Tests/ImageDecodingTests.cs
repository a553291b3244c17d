using Microsoft.ML.BootMae.DataViews;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class ImageDecodingTests
{
    private const float Step = 1f / 255f;

    private static float[] DecodeFirst(IDataView data, string column, BootMaeArchitecture architecture, ImageAugmentation? augmentation = null, Random? random = null)
    {
        var info = ImageColumn.Resolve(data.Schema, column);
        using var cursor = data.GetRowCursor(new[] { data.Schema[column] });
        Assert.IsTrue(cursor.MoveNext());
        using var reader = new ImageRowReader(cursor, info);
        var raw = new RawImage();
        reader.Read(raw);
        var pixels = new float[ImageDecoder.PixelsPerImage(architecture)];
        ImageDecoder.Decode(raw, info, architecture.ImageSize, architecture.Channels, pixels, augmentation, random);
        return pixels;
    }

    private static void AssertColour(float[] pixels)
    {
        for (int y = 0; y < 8; y++)
        {
            for (int x = 0; x < 8; x++)
            {
                int o = (y * 8) + x;
                Assert.AreEqual(MlNetTestData.ColourR(x, y) * Step, pixels[o], 1e-6f, $"R at {x},{y}");
                Assert.AreEqual(MlNetTestData.ColourG(x, y) * Step, pixels[64 + o], 1e-6f, $"G at {x},{y}");
                Assert.AreEqual(MlNetTestData.ColourB(x, y) * Step, pixels[128 + o], 1e-6f, $"B at {x},{y}");
            }
        }
    }

    [TestMethod]
    public void RawBytesColourDecodeExactly()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Fit(MlNetTestData.Rows(ml, new[] { (files.WriteColour("c.png"), "a") }))
            .Transform(MlNetTestData.Rows(ml, new[] { ("c.png", "a") }));
        AssertColour(DecodeFirst(data, "Image", MlNetTestData.Tiny8));
    }

    [TestMethod]
    public void RawBytesGreyDecodeExactlyToGreyAndToRgb()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteGrey("g.png"), "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var grey = DecodeFirst(data, "Image", MlNetTestData.Tiny8Grey);
        var rgb = DecodeFirst(data, "Image", MlNetTestData.Tiny8);
        for (int y = 0; y < 8; y++)
        {
            for (int x = 0; x < 8; x++)
            {
                float expected = MlNetTestData.Grey(x, y) * Step;
                int o = (y * 8) + x;
                Assert.AreEqual(expected, grey[o], 1e-6f);
                Assert.AreEqual(expected, rgb[o], 1e-6f);
                Assert.AreEqual(expected, rgb[64 + o], 1e-6f);
                Assert.AreEqual(expected, rgb[128 + o], 1e-6f);
            }
        }
    }

    [TestMethod]
    public void ColourBecomesLumaForGreyModels()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("c.png"), "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var grey = DecodeFirst(data, "Image", MlNetTestData.Tiny8Grey);
        for (int y = 0; y < 8; y++)
        {
            for (int x = 0; x < 8; x++)
            {
                float luma = (0.299f * MlNetTestData.ColourR(x, y)) + (0.587f * MlNetTestData.ColourG(x, y)) + (0.114f * MlNetTestData.ColourB(x, y));
                Assert.AreEqual(luma * Step, grey[(y * 8) + x], 1e-5f);
            }
        }
    }

    [TestMethod]
    public void OddSizesAreResizedToTheArchitecture()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteUniform("u.png", 5, 7, new SKColor(200, 100, 50)), "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var pixels = DecodeFirst(data, "Image", MlNetTestData.Tiny8);
        Assert.HasCount(192, pixels);
        for (int i = 0; i < 64; i++)
        {
            Assert.AreEqual(200 * Step, pixels[i], 1.5f * Step);
            Assert.AreEqual(100 * Step, pixels[64 + i], 1.5f * Step);
            Assert.AreEqual(50 * Step, pixels[128 + i], 1.5f * Step);
        }
    }

    [TestMethod]
    public void MLImageColumnDecodesExactly()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("c.png"), "a") });
        var data = ml.Transforms.LoadImages("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        Assert.AreEqual(ImageColumnKind.Image, ImageColumn.Resolve(data.Schema, "Image").Kind);
        AssertColour(DecodeFirst(data, "Image", MlNetTestData.Tiny8));
    }

    [TestMethod]
    public void MLImageGreyFileDecodesExactly()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteGrey("g.png"), "a") });
        var data = ml.Transforms.LoadImages("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var grey = DecodeFirst(data, "Image", MlNetTestData.Tiny8Grey);
        Assert.AreEqual(MlNetTestData.Grey(3, 5) * Step, grey[(5 * 8) + 3], 1e-6f);
        Assert.AreEqual(MlNetTestData.Grey(7, 7) * Step, grey[63], 1e-6f);
    }

    [TestMethod]
    public void ExtractedPixelsDecodeExactly()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("c.png"), "a") });
        var data = ml.Transforms.LoadImages("Img", files.Folder, "ImagePath")
            .Append(ml.Transforms.ResizeImages("Img", 8, 8))
            .Append(ml.Transforms.ExtractPixels("Image", "Img"))
            .Fit(rows).Transform(rows);
        var info = ImageColumn.Resolve(data.Schema, "Image");
        Assert.AreEqual(ImageColumnKind.Pixels, info.Kind);
        Assert.AreEqual(3, info.Channels);
        AssertColour(DecodeFirst(data, "Image", MlNetTestData.Tiny8));
    }

    [TestMethod]
    public void ExtractedPixelsOfAnotherSizeAreResized()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteUniform("u.png", 12, 12, new SKColor(10, 120, 240)), "a") });
        var data = ml.Transforms.LoadImages("Img", files.Folder, "ImagePath")
            .Append(ml.Transforms.ResizeImages("Img", 12, 12))
            .Append(ml.Transforms.ExtractPixels("Image", "Img"))
            .Fit(rows).Transform(rows);
        var pixels = DecodeFirst(data, "Image", MlNetTestData.Tiny8);
        Assert.AreEqual(10 * Step, pixels[5], 1.5f * Step);
        Assert.AreEqual(120 * Step, pixels[64 + 9], 1.5f * Step);
        Assert.AreEqual(240 * Step, pixels[128 + 63], 1.5f * Step);
    }

    [TestMethod]
    public void AugmentationIsDeterministicPerSeedEpochAndRow()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteColour("big.png", 32, 32), "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var augmentation = new ImageAugmentation(0.2);
        var first = DecodeFirst(data, "Image", MlNetTestData.Tiny8, augmentation, ImageAugmentation.RandomFor(5, 0, 0));
        var again = DecodeFirst(data, "Image", MlNetTestData.Tiny8, augmentation, ImageAugmentation.RandomFor(5, 0, 0));
        CollectionAssert.AreEqual(first, again);
        int differing = 0;
        for (int epoch = 1; epoch <= 4; epoch++)
        {
            var other = DecodeFirst(data, "Image", MlNetTestData.Tiny8, augmentation, ImageAugmentation.RandomFor(5, epoch, 0));
            differing += first.SequenceEqual(other) ? 0 : 1;
        }

        Assert.IsGreaterThan(0, differing, "another epoch should give another crop or flip");
    }

    [TestMethod]
    public void RandomResizedCropStaysInsideTheImageAndInScale()
    {
        var random = new Random(3);
        for (int i = 0; i < 200; i++)
        {
            var crop = ImageDecoder.RandomResizedCrop(40, 30, 0.2, random);
            Assert.IsTrue(crop.Left >= 0 && crop.Top >= 0 && crop.Right <= 40 && crop.Bottom <= 30, crop.ToString());
            Assert.IsGreaterThan(0, crop.Width * crop.Height);
        }
    }

    [TestMethod]
    public void UndecodableBytesNameTheRowAndTheFix()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[] { (files.WriteBad("bad.png"), "a") });
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var info = ImageColumn.Resolve(data.Schema, "Image");
        using var cursor = data.GetRowCursor(data.Schema);
        Assert.IsTrue(cursor.MoveNext());
        using var reader = new ImageRowReader(cursor, info, ImageRowReader.FindSourceColumn(data.Schema, "Image"));
        var raw = new RawImage();
        reader.Read(raw);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => ImageDecoder.Decode(raw, info, 8, 3, new float[192]));
        StringAssert.Contains(ex.Message, "bad.png");
        StringAssert.Contains(ex.Message, "SkipBadImages");
    }
}
