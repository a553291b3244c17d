using System.Buffers.Binary;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// Crafted model files (issue 10, item 6): encoder and classifier headers that claim huge architectures, model zips
/// with padded or incomplete manifests, malformed safetensors. Each must fail with one <see cref="InvalidDataException"/>
/// that names the file and the field, before anything is allocated for the claimed sizes.
/// </summary>
[TestClass]
public sealed class HostileFileTests
{
    internal static readonly BootMaeArchitecture Huge = MlNetTestData.Tiny8 with { EmbedDim = 262144, Heads = 2, PredictorHeads = 2 };

    [TestMethod]
    public void StateElementCountMatchesTheRealStateDict()
    {
        BootMaeRuntime.EnsureTorchLoaded();
        foreach (var a in new[] { MlNetTestData.Tiny8, MlNetTestData.Tiny8Grey, BootMaeArchitecture.Tiny28, MlNetTestData.Tiny8 with { MlpRatio = 2.7, EmbedDim = 20, Heads = 3 } })
        {
            using var module = new VisionTransformerEncoder(a);
            long real = module.state_dict().Values.Sum(t => t.numel());
            Assert.AreEqual((double)real, VisionTransformerEncoder.StateElementCount(a), $"{a}");
        }
    }

    [TestMethod]
    public void EncoderHeaderClaimingAHugeArchitectureIsRefusedBeforeAllocating()
    {
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "encoder.bootmae");
        File.WriteAllBytes(path, Container("BOOTMAE1", new JsonObject { ["Format"] = "bootmae-encoder", ["Version"] = 1, ["Architecture"] = Arch(Huge) }, SmallPayload(32 * 1024)));
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));
        StringAssert.Contains(ex.Message, path);
        StringAssert.Contains(ex.Message, "EmbedDim 262144");
        StringAssert.Contains(ex.Message, "PayloadLength");
    }

    [TestMethod]
    public void EncoderHeaderWithoutArchitectureNamesTheField()
    {
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "encoder.bootmae");
        File.WriteAllBytes(path, Container("BOOTMAE1", new JsonObject { ["Format"] = "bootmae-encoder", ["Version"] = 1 }, SmallPayload(64)));
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));
        StringAssert.Contains(ex.Message, path);
        StringAssert.Contains(ex.Message, "'Architecture'");
    }

    [TestMethod]
    public void EncoderHeaderClaimingAHugePayloadFailsAsTruncatedWithoutReservingIt()
    {
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "encoder.bootmae");
        var header = new JsonObject { ["Format"] = "bootmae-encoder", ["Version"] = 1, ["Architecture"] = Arch(MlNetTestData.Tiny8) };
        File.WriteAllBytes(path, Container("BOOTMAE1", header, SmallPayload(1024), claimedLength: int.MaxValue));
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.Load(path));
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        StringAssert.Contains(ex.Message, "truncated");
        StringAssert.Contains(ex.Message, path);
        Assert.IsLessThan(64L << 20, allocated, $"allocated {allocated >> 20} MB for a 2 GB claim");
    }

    [TestMethod]
    public void ClassifierHeaderClaimingAHugeArchitectureOrClassCountIsRefused()
    {
        foreach (var (arch, classes) in new[] { (Huge, 10), (MlNetTestData.Tiny8, 1_000_000_000) })
        {
            var header = new JsonObject
            {
                ["Format"] = "bootmae-classifier", ["Version"] = 1, ["Architecture"] = Arch(arch), ["NumberOfClasses"] = classes,
                ["HeadKind"] = "FineTune", ["SourceBlock"] = 1,
            };
            using var stream = new MemoryStream(Container("BOOTMAEC", header, SmallPayload(32 * 1024)));
            var ex = Assert.ThrowsExactly<InvalidDataException>(() => ImageClassifierEngine.Load(stream, arch, classes));
            StringAssert.Contains(ex.Message, "PayloadLength");
            StringAssert.Contains(ex.Message, $"NumberOfClasses {classes}");
        }
    }

    [TestMethod]
    public void PaddedManifestIsRefusedBeforeParsing()
    {
        using var dir = new TempFolder();
        var path = SavedModel(dir);
        // 40 MB of spaces compress to about 40 KB: a small file whose manifest would be parsed whole.
        EditZip(path, zip => Replace(zip, "BootMae/manifest.json", Encoding.UTF8.GetBytes(new string(' ', 40 << 20) + "{}")));
        var started = System.Diagnostics.Stopwatch.StartNew();
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => new MLContext(1).Model.LoadBootMae(path, out _));
        StringAssert.Contains(ex.Message, path);
        StringAssert.Contains(ex.Message, "manifest.json");
        StringAssert.Contains(ex.Message, "16777216");
        Assert.IsLessThan(5000L, started.ElapsedMilliseconds);
    }

    [TestMethod]
    [DataRow("entries", "field 'entries'")]
    [DataRow("stages", "field 'stages'")]
    [DataRow("stages[0].sha256", "field 'stages[0].sha256'")]
    [DataRow("stages[0].config", "field 'stages[0].config'")]
    public void ManifestWithAMissingFieldNamesIt(string field, string expected)
    {
        using var dir = new TempFolder();
        var path = SavedModel(dir);
        EditZip(path, zip =>
        {
            var manifest = JsonNode.Parse(Read(zip, "BootMae/manifest.json"))!.AsObject();
            if (field.StartsWith("stages[0].", StringComparison.Ordinal))
            {
                manifest["stages"]![0]!.AsObject()[field["stages[0].".Length..]] = null;
            }
            else
            {
                manifest.Remove(field);
            }

            Replace(zip, "BootMae/manifest.json", Encoding.UTF8.GetBytes(manifest.ToJsonString()));
        });
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => new MLContext(1).Model.LoadBootMae(path, out _));
        StringAssert.Contains(ex.Message, path);
        StringAssert.Contains(ex.Message, expected);
    }

    [TestMethod]
    [DataRow("not json", "not valid JSON")]
    [DataRow("[1, 2]", "not an object")]
    [DataRow("{\"w\": 3}", "tensor 'w' is a JSON Number")]
    [DataRow("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", "tensor 'w' has no field 'dtype'")]
    [DataRow("{\"w\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", "tensor 'w' field 'dtype' is a JSON Number")]
    [DataRow("{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "tensor 'w' field 'dtype'")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [\"a\"], \"data_offsets\": [0, 4]}}", "tensor 'w' field 'shape' holds \"a\"")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", "tensor 'w' field 'shape' holds 1.5")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", "negative dimension")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 400]}}", "tensor 'w' field 'data_offsets'")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", "need 8")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 0]}}", "more elements than can exist")]
    [DataRow("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 0]}}", "more elements than can exist")]
    [DataRow("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", "overlaps tensor 'a'")]
    public void MalformedSafetensorsGiveOneInvalidDataExceptionNamingFileAndField(string header, string expected)
    {
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "weights.safetensors");
        var json = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + 16];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, json.Length);
        json.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        BootMaeRuntime.EnsureTorchLoaded();
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(path));
        StringAssert.Contains(ex.Message, path);
        StringAssert.Contains(ex.Message, expected);
        // The public importer reports the same, with the file.
        var viaImport = Assert.ThrowsExactly<InvalidDataException>(() => BootMaeEncoder.FromPyTorch(path, MlNetTestData.Tiny8));
        StringAssert.Contains(viaImport.Message, path);
    }

    internal static JsonNode Arch(BootMaeArchitecture a) => JsonSerializer.SerializeToNode(a)!;

    /// <summary>A syntactically valid safetensors payload of about <paramref name="size"/> bytes holding no tensors.</summary>
    internal static byte[] SmallPayload(int size)
    {
        var header = Encoding.UTF8.GetBytes("{\"__metadata__\":{\"pad\":\"" + new string('x', Math.Max(0, size - 40)) + "\"}}");
        var bytes = new byte[8 + header.Length];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, header.Length);
        header.CopyTo(bytes, 8);
        return bytes;
    }

    /// <summary>A BootMAE weights container: magic, header length, JSON header with the payload's length and SHA-256, payload.</summary>
    internal static byte[] Container(string magic, JsonObject header, byte[] payload, long? claimedLength = null)
    {
        header["PayloadLength"] = claimedLength ?? payload.LongLength;
        header["PayloadSha256"] = Convert.ToHexString(SHA256.HashData(payload));
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var stream = new MemoryStream();
        stream.Write(Encoding.ASCII.GetBytes(magic));
        var length = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, json.Length);
        stream.Write(length);
        stream.Write(json);
        stream.Write(payload);
        return stream.ToArray();
    }

    internal static string SavedModel(TempFolder dir)
    {
        var files = new MlNetTestData();
        try
        {
            var ml = new MLContext(1);
            var rows = files.ColourRows(ml, 2);
            using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 3);
            var data = ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Fit(rows).Transform(rows);
            var model = ml.Transforms.BootMaeFeaturize(encoder).Fit(data);
            var path = Path.Combine(dir.Path, "model.zip");
            ml.Model.SaveBootMae(model, data.Schema, path);
            return path;
        }
        finally
        {
            files.Dispose();
        }
    }

    internal static void EditZip(string path, Action<ZipArchive> edit)
    {
        using var zip = ZipFile.Open(path, ZipArchiveMode.Update);
        edit(zip);
    }

    internal static byte[] Read(ZipArchive zip, string name)
    {
        using var s = zip.GetEntry(name)!.Open();
        using var copy = new MemoryStream();
        s.CopyTo(copy);
        return copy.ToArray();
    }

    internal static void Replace(ZipArchive zip, string name, byte[] content)
    {
        zip.GetEntry(name)!.Delete();
        using var s = zip.CreateEntry(name, CompressionLevel.Optimal).Open();
        s.Write(content);
    }
}

/// <summary>A temporary folder deleted with its contents.</summary>
internal sealed class TempFolder : IDisposable
{
    internal TempFolder() => Directory.CreateDirectory(Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"bootmae-rel-{Guid.NewGuid():N}"));

    internal string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }
}
