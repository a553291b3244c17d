using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class SchemaValidationTests
{
    private static BootMaeEncoder? _encoder;

    [ClassInitialize]
    public static void CreateEncoder(TestContext context)
    {
        _ = context;
        _encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
    }

    [ClassCleanup]
    public static void DisposeEncoder() => _encoder?.Dispose();

    // SchemaShape.Create is internal to ML.NET (EstimatorChain calls it); tests reach it by reflection.
    private static SchemaShape ShapeOf(DataViewSchema schema) =>
        (SchemaShape)typeof(SchemaShape).GetMethod("Create", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static, new[] { typeof(DataViewSchema) })!
            .Invoke(null, new object[] { schema })!;

    private static IDataView Paths(MLContext ml) => MlNetTestData.Rows(ml, new[] { ("a.png", "x"), ("b.png", "y") });

    [TestMethod]
    public void MissingImageColumnUsesMlNetWording()
    {
        var ml = new MLContext(1);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Transforms.BootMaeFeaturize(_encoder!, imageColumnName: "Picture").Fit(Paths(ml)));
        StringAssert.Contains(ex.Message, "Could not find image column 'Picture'");
        StringAssert.Contains(ex.Message, "LoadRawImageBytes");
    }

    [TestMethod]
    public void MissingImageColumnIsCaughtByGetOutputSchema()
    {
        var ml = new MLContext(1);
        var pipeline = ml.Transforms.BootMaePretrain(imageColumnName: "Picture", architecture: MlNetTestData.Tiny8);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => pipeline.GetOutputSchema(ShapeOf(Paths(ml).Schema)));
        StringAssert.Contains(ex.Message, "Could not find image column 'Picture'");
    }

    [TestMethod]
    public void WrongImageColumnTypeNamesTheLoaders()
    {
        var ml = new MLContext(1);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Transforms.BootMaeFeaturize(_encoder!, imageColumnName: "ImagePath").Fit(Paths(ml)));
        StringAssert.Contains(ex.Message, "Schema mismatch for image column 'ImagePath'");
        StringAssert.Contains(ex.Message, "got String");
        StringAssert.Contains(ex.Message, "LoadRawImageBytes");
        StringAssert.Contains(ex.Message, "LoadImages");
        StringAssert.Contains(ex.Message, "ExtractPixels");
    }

    [TestMethod]
    public void TextLabelAsksForMapValueToKey()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 3);
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(encoder: _encoder, maxEpochs: 1);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.Fit(data));
        StringAssert.Contains(ex.Message, "Schema mismatch for label column 'Label': expected Key<UInt32>, got String");
        StringAssert.Contains(ex.Message, "MapValueToKey");

        var shapeEx = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.GetOutputSchema(ShapeOf(data.Schema)));
        StringAssert.Contains(shapeEx.Message, "expected Key<UInt32>");
    }

    [TestMethod]
    public void MissingLabelColumnIsNamed()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var rows = files.ColourRows(ml, 3);
        var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(labelColumnName: "Class", encoder: _encoder, maxEpochs: 1);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.Fit(data));
        StringAssert.Contains(ex.Message, "Could not find label column 'Class'");
    }

    [TestMethod]
    public void ZeroRowsFailBeforeTraining()
    {
        using var files = new MlNetTestData();
        var ml = new MLContext(1);
        var empty = MlNetTestData.Rows(ml, Array.Empty<(string, string)>());
        var pipeline = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath")
            .Append(ml.Transforms.BootMaePretrain(architecture: MlNetTestData.Tiny8, maxEpochs: 1, batchSize: 2));
        var ex = Assert.ThrowsExactly<InvalidOperationException>(() => pipeline.Fit(empty));
        StringAssert.Contains(ex.Message, "no rows");
    }

    [TestMethod]
    public void ClassifierShapeSupportsMapKeyToValue()
    {
        var ml = new MLContext(1);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", ".", "ImagePath"))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(encoder: _encoder))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var shape = pipeline.GetOutputSchema(ShapeOf(Paths(ml).Schema));
        var score = shape.Single(c => c.Name == "Score");
        Assert.AreEqual(SchemaShape.Column.VectorKind.Vector, score.Kind);
        Assert.AreEqual(NumberDataViewType.Single, score.ItemType);
        CollectionAssert.IsSubsetOf(new[] { "ScoreColumnKind", "ScoreValueKind", "ScoreColumnSetId", "SlotNames" }, score.Annotations.Select(a => a.Name).ToArray());
        var predicted = shape.Single(c => c.Name == "PredictedLabel");
        Assert.IsFalse(predicted.IsKey, "MapKeyToValue turns the key back into the label's text");
        Assert.AreEqual(TextDataViewType.Instance, predicted.ItemType);
    }

    [TestMethod]
    public void FeaturizerShapeAddsAFloatVector()
    {
        var ml = new MLContext(1);
        var pipeline = ml.Transforms.LoadRawImageBytes("Image", ".", "ImagePath").Append(ml.Transforms.BootMaeFeaturize(_encoder!));
        var features = pipeline.GetOutputSchema(ShapeOf(Paths(ml).Schema)).Single(c => c.Name == "Features");
        Assert.AreEqual(SchemaShape.Column.VectorKind.Vector, features.Kind);
        Assert.AreEqual(NumberDataViewType.Single, features.ItemType);
    }

    [TestMethod]
    public void SourceBlockOutOfRangeIsRejected()
    {
        var ml = new MLContext(1);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() =>
            ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = _encoder, SourceBlock = 2 }));
        StringAssert.Contains(ex.Message, "SourceBlock");
    }

    [TestMethod]
    public void FeaturizerWithoutEncoderIsRejected()
    {
        var ml = new MLContext(1);
        var ex = Assert.ThrowsExactly<ArgumentNullException>(() => ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options()));
        StringAssert.Contains(ex.Message, "Encoder is required");
    }
}
