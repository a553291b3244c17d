using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Mixed precision (<see cref="BootMaePrecision.BFloat16Mixed"/>, <see cref="MixedPrecision"/>): the mixed student against
/// the fp32 PyTorch parity fixture, training with it, and where it is switched on and off. The modules are switched on
/// directly, so these run on any CPU; the shapes are tiny because on a CPU without fast bf16 (AVX2 only) libtorch's bf16
/// products are its slow generic kernel.
/// Tolerances against the fp32 reference, per tensor kind (bf16 keeps 8 significant bits, ~4e-3 relative per rounding):
/// activations relative L2 error ≤ 3e-2; losses relative 1e-2; gradients cosine ≥ 0.99 and norm within 5% for every
/// tensor whose reference norm is above 1e-4 of the largest one (the rest must stay below 1e-3 of it); the AdamW update
/// (after − before) cosine ≥ 0.99 against the reference's per tensor where the reference |g| is at least 5% of the
/// tensor's largest, and ≥ 0.98 over all entries; the EMA teacher is m·teacher + (1 − m)·student of the masters (1e-6). Measured here: every gradient cosine
/// ≥ 0.9997.
/// </summary>
[TestClass]
public sealed class MixedPrecisionTests
{
    private const double ActivationRelL2 = 3e-2;
    private const double LossRel = 1e-2;
    private const double GradCosine = 0.99;
    private const double GradNormRel = 5e-2;
    private const double UpdateCosine = 0.99;
    private const double UpdateCosineAll = 0.98;
    private const double UpdateReliableFraction = 0.05;

    private static string Dir => Path.Combine(AppContext.BaseDirectory, "TestData", "parity");

    private static Dictionary<string, Tensor> WithPrefix(Dictionary<string, Tensor> all, string prefix)
        => all.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);

    private static double RelL2(Tensor expected, Tensor actual)
    {
        using var scope = NewDisposeScope();
        var e = expected.to(ScalarType.Float64);
        var a = actual.to(ScalarType.Float64);
        return e.sub(a).norm().item<double>() / Math.Max(e.norm().item<double>(), 1e-30);
    }

    private static double Cosine(Tensor x, Tensor y)
    {
        using var scope = NewDisposeScope();
        var a = x.to(ScalarType.Float64).flatten();
        var b = y.to(ScalarType.Float64).flatten();
        return a.dot(b).item<double>() / Math.Max(a.norm().item<double>() * b.norm().item<double>(), 1e-300);
    }

    private static double AssertActivation(Tensor expected, Tensor actual, string what)
    {
        Assert.AreEqual(ScalarType.Float32, actual.dtype, what + " leaves the bf16 region in fp32");
        double err = RelL2(expected, actual);
        Assert.IsLessThanOrEqualTo(ActivationRelL2, err, what + " relative L2 error");
        return err;
    }

    [TestMethod]
    public void EveryModuleWithAMatrixProductTakesTheFlag()
    {
        using var scope = NewDisposeScope();
        using var boot = new BootMaeNetwork(ParityTests.Architecture, OfficialSettings.Create());
        using var mae = new BootMaeNetwork(ParityTests.Architecture, OfficialSettings.Create(s => { s.Mode = BootMaeMode.Mae; s.MaeDecoderDepth = 2; }));
        using var classifier = new ImageClassifier(new VisionTransformerEncoder(ParityTests.Architecture), 3, linearProbe: false, sourceBlock: 1);
        using var probe = new ImageClassifier(new VisionTransformerEncoder(ParityTests.Architecture), 3, linearProbe: true, sourceBlock: 1);
        foreach (nn.Module root in new nn.Module[] { boot, mae, classifier, probe })
        {
            int taken = MixedPrecision.Apply(root, true);
            var all = root.modules().Prepend(root).ToList();
            // A module that owns a Linear or a convolution must run it through MixedPrecision, so it must take the flag.
            var owners = all.Where(m => m.named_children().Any(c => c.module is Linear or Conv2d or ConvTranspose2d)).ToList();
            var missed = owners.Where(m => m is not IMixedPrecisionModule).Select(m => m.GetType().Name).Distinct().ToList();
            Assert.IsEmpty(missed, $"{root.GetType().Name}: modules with matrix products but no flag: {string.Join(", ", missed)}");
            Assert.AreEqual(all.OfType<IMixedPrecisionModule>().Count(), taken);
            Assert.IsTrue(all.OfType<IMixedPrecisionModule>().All(m => m.MixedPrecision));
            MixedPrecision.Apply(root, false);
            Assert.IsTrue(all.OfType<IMixedPrecisionModule>().All(m => !m.MixedPrecision), "switched off again");
            Assert.IsTrue(root.parameters().All(p => p.dtype == ScalarType.Float32), "the flag never converts the weights");
        }
    }

    [TestMethod]
    public void FlagOffIsBitIdenticalToAModuleThatNeverHadIt()
    {
        using var scope = NewDisposeScope();
        using var a = BootMaeNetwork.Create(ParityTests.Architecture, OfficialSettings.Create(), seed: 3);
        using var b = BootMaeNetwork.Create(ParityTests.Architecture, OfficialSettings.Create(), seed: 3);
        MixedPrecision.Apply(b, true);
        MixedPrecision.Apply(b, false);
        var f = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        var ids = f["in.ids_shuffle"];
        using var masks = MaskBatch.FromShuffle(ids.data<long>().ToArray(), (int)ids.shape[0], (int)ids.shape[1], 4);
        var images = f["in.images"];
        var fa = a.Forward(images, masks);
        var fb = b.Forward(images, masks);
        TensorAssert.Equal(fa.Pixels, fb.Pixels, "pixels");
        TensorAssert.Equal(fa.Features!, fb.Features!, "features");
    }

    [TestMethod]
    public void MixedStudentMatchesTheFp32ReferenceWithinBf16TolerancesAndKeepsFp32Masters()
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        var scalars = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "parity.json"))).RootElement;
        var cfg = scalars.GetProperty("config");
        using var net = new BootMaeNetwork(ParityTests.Architecture, OfficialSettings.Create());
        var weights = WithPrefix(f, "w.");
        weights["pos_embed"] = f["table.pos_embed"];
        weights["de_pos_embed"] = f["table.de_pos_embed"];
        net.LoadReferenceStateDict(weights);
        using var teacher = new MomentumTeacher(net.Encoder);
        Assert.IsGreaterThan(0, MixedPrecision.Apply(net, true));
        var ids = f["in.ids_shuffle"];
        using var masks = MaskBatch.FromShuffle(ids.data<long>().ToArray(), (int)ids.shape[0], (int)ids.shape[1], cfg.GetProperty("num_keep").GetInt32());
        var images = f["in.images"];

        var forward = net.Forward(images, masks);
        double activationError = new[]
        {
            AssertActivation(f["out.latent"], forward.Encoder.Latent, "encoder output"),
            AssertActivation(f["out.shallow"], forward.Encoder.Shallow, "shallow feature"),
            AssertActivation(f["out.deep"], forward.Encoder.Deep, "deep feature"),
            AssertActivation(f["out.pixels"], forward.Pixels, "regressor output"),
            AssertActivation(f["out.features"], forward.Features!, "predictor output"),
        }.Max();
        double lossError = 0, gradCosine = 1, updateCosine = 1;

        // The teacher is not the student's module: it stays fp32 here (its own bf16 twin is a separate switch).
        var target = teacher.Forward(images);
        TensorAssert.Close(f["out.teacher"], target, 1e-4, 1e-4, "teacher target (fp32)");

        var loss = BootMaeLosses.Compute(net, forward, images, masks, target, null, cfg.GetProperty("feature_weight").GetDouble());
        Assert.AreEqual(ScalarType.Float32, loss.Total.dtype, "the loss is fp32");
        foreach (var (name, value) in new[] { ("loss_pixel", loss.Pixel!), ("loss_feature", loss.Feature!), ("loss_total", loss.Total) })
        {
            double expected = scalars.GetProperty(name).GetDouble();
            Assert.AreEqual(expected, value.item<float>(), LossRel * expected, name);
            lossError = Math.Max(lossError, Math.Abs(value.item<float>() - expected) / expected);
        }

        loss.Total.backward();
        var grads = WithPrefix(f, "grad.");
        double largest = grads.Values.Max(g => g.norm().item<float>());
        int compared = 0;
        foreach (var (name, p) in net.named_parameters())
        {
            string key = BootMaeNetwork.ToReferenceKey(name);
            if (!p.requires_grad)
            {
                continue;
            }

            Assert.AreEqual(ScalarType.Float32, p.dtype, "master " + key);
            Assert.IsNotNull(p.grad, "gradient reaches the master " + key);
            Assert.AreEqual(ScalarType.Float32, p.grad!.dtype, "fp32 gradient of " + key);
            var expected = grads[key];
            double norm = expected.norm().item<float>();
            if (norm > 1e-4 * largest)
            {
                Assert.IsGreaterThanOrEqualTo(GradCosine, Cosine(expected, p.grad), "gradient direction " + key);
                gradCosine = Math.Min(gradCosine, Cosine(expected, p.grad));
                Assert.AreEqual(norm, p.grad.norm().item<float>(), GradNormRel * norm, "gradient norm " + key);
            }
            else
            {
                // A gradient that is (nearly) zero in the reference must stay that small.
                Assert.IsLessThanOrEqualTo(1e-3 * largest, p.grad.norm().item<float>(), "small gradient " + key);
            }

            compared++;
        }

        Assert.AreEqual(grads.Count, compared);

        var before = net.ReferenceStateDict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        using var optimizer = ParameterGroups.CreateAdamW(net, cfg.GetProperty("lr").GetDouble(), cfg.GetProperty("weight_decay").GetDouble());
        optimizer.Step();
        for (int i = 0; i < optimizer.Parameters.Count(); i++)
        {
            var (_, m, v) = optimizer.StateOf(i);
            Assert.AreEqual(ScalarType.Float32, m.dtype, "AdamW first moment");
            Assert.AreEqual(ScalarType.Float32, v.dtype, "AdamW second moment");
        }

        var after = net.ReferenceStateDict();
        var references = new List<Tensor>();
        var updates = new List<Tensor>();
        foreach (var (key, expected) in WithPrefix(f, "step."))
        {
            Assert.AreEqual(ScalarType.Float32, after[key].dtype, "master after the step " + key);
            using var reference = expected.sub(before[key]);
            using var update = after[key].sub(before[key]);
            // Adam's first step is about lr·sign(g): where |g| is tiny, bf16 noise flips the sign of a full-size update, so
            // the direction is checked where the reference |g| is at least 5% of the tensor's largest.
            var g = grads[key].abs();
            using var reliable = g.ge(g.max().mul(UpdateReliableFraction));
            Assert.IsGreaterThanOrEqualTo(UpdateCosine, Cosine(reference.masked_select(reliable), update.masked_select(reliable)), "AdamW update " + key);
            updateCosine = Math.Min(updateCosine, Cosine(reference.masked_select(reliable), update.masked_select(reliable)));
            references.Add(reference.flatten());
            updates.Add(update.flatten());
        }

        double updateCosineAll = Cosine(cat(references, 0), cat(updates, 0));
        Assert.IsGreaterThanOrEqualTo(UpdateCosineAll, updateCosineAll, "AdamW update, all entries of all tensors");
        Console.WriteLine($"mixed vs fp32 reference: activations rel L2 ≤ {activationError:E2}, losses rel ≤ {lossError:E2}, gradient cosine ≥ {gradCosine:F5}, " +
            $"update cosine (reliable entries) ≥ {updateCosine:F4}, all entries {updateCosineAll:F4}");

        teacher.Update(net.Encoder, cfg.GetProperty("ema_momentum").GetDouble());
        var teacherState = teacher.Encoder.state_dict();
        double momentum = cfg.GetProperty("ema_momentum").GetDouble();
        var studentAfter = net.ReferenceStateDict();
        foreach (var key in WithPrefix(f, "ema.").Keys)
        {
            // The EMA is fp32 arithmetic on the fp32 masters: exactly m·teacher + (1 − m)·student of this run.
            using var expected = before[key].mul(momentum).add(studentAfter[key].mul(1 - momentum));
            TensorAssert.Close(expected, teacherState[key], 1e-6, 1e-6, "EMA " + key);
        }
    }

    [TestMethod]
    public void MixedMaeModeMatchesTheFp32ReferenceWithinBf16Tolerances()
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "mae.safetensors"));
        var boot = Safetensors.Load(Path.Combine(Dir, "bootmae.safetensors"));
        var scalars = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "parity.json"))).RootElement;
        var cfg = scalars.GetProperty("config");
        using var net = new BootMaeNetwork(ParityTests.Architecture, OfficialSettings.Create(s => { s.Mode = BootMaeMode.Mae; s.MaeDecoderDepth = cfg.GetProperty("mae_dec_depth").GetInt32(); }));
        var weights = WithPrefix(f, "w.");
        weights["pos_embed"] = boot["table.pos_embed"];
        weights["decoder_pos_embed"] = boot["table.de_pos_embed"];
        net.LoadReferenceStateDict(weights);
        MixedPrecision.Apply(net, true);
        var ids = boot["in.ids_shuffle"];
        using var masks = MaskBatch.FromShuffle(ids.data<long>().ToArray(), (int)ids.shape[0], (int)ids.shape[1], cfg.GetProperty("num_keep").GetInt32());
        var images = boot["in.images"];
        var forward = net.Forward(images, masks);
        AssertActivation(f["out.pred"], forward.Pixels, "MAE decoder output");
        var loss = BootMaeLosses.Compute(net, forward, images, masks, null, null, 0);
        double expected = scalars.GetProperty("loss_mae").GetDouble();
        Assert.AreEqual(expected, loss.Total.item<float>(), LossRel * expected, "MAE loss");
        loss.Total.backward();
        var named = net.named_parameters().ToDictionary(kv => BootMaeNetwork.ToReferenceKey(kv.name), kv => kv.parameter);
        foreach (var key in new[] { "decoder_pred.weight", "blocks.0.attn.qkv.weight" })
        {
            Assert.AreEqual(ScalarType.Float32, named[key].grad!.dtype, "fp32 gradient of " + key);
            Assert.IsGreaterThanOrEqualTo(GradCosine, Cosine(f["grad." + key], named[key].grad!), "gradient direction " + key);
        }
    }

    [TestMethod]
    public void MixedPretrainingLossFallsAndStaysCloseToFp32()
    {
        var split = FashionMnistSample.LoadArrays(trainPerClass: 8, testPerClass: 1).Train;
        var pixels = new float[split.Count * 28 * 28];
        for (int i = 0; i < split.Count; i++)
        {
            split.GetImage(i).CopyTo(pixels, i * 28 * 28);
        }

        // 80 images, batch 8: 30 steps over 3 epochs. Float32 settings, so only the hook switches the student.
        List<float> Run(bool mixed)
        {
            var pixelLosses = new List<float>();
            var settings = new BootMaePretrainerSettings
            {
                MaxEpochs = 3, BatchSize = 8, LearningRate = 3e-2, Seed = 5, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32, LogEveryNSteps = 1,
            };
            var hooks = new PretrainingHooks
            {
                InitializeNetwork = n => MixedPrecision.Apply(n, mixed),
                AfterStep = t =>
                {
                    pixelLosses.Add(t.Pixel!.Value);
                    Assert.IsTrue(t.Network.parameters().All(p => p.dtype == ScalarType.Float32), "masters stay fp32");
                    Assert.AreEqual(mixed, t.Network.modules().OfType<IMixedPrecisionModule>().All(m => m.MixedPrecision), "flag kept during the run");
                },
            };
            using var encoder = new BootMaePretrainer(PretrainerTests.Tiny, settings) { Hooks = hooks }
                .Train(new InMemoryImageSource(pixels, null, split.Count, 1, 28, 11, shuffle: true));
            Assert.IsFalse(encoder.Module.modules().OfType<IMixedPrecisionModule>().Any(m => m.MixedPrecision), "the returned encoder predicts in fp32");
            return pixelLosses;
        }

        var fp32 = Run(false);
        var mixed = Run(true);
        Assert.HasCount(30, mixed);
        double First(List<float> l) => l.Take(5).Average();
        double Last(List<float> l) => l.TakeLast(5).Average();
        Assert.IsLessThan(0.95 * First(mixed), Last(mixed), $"mixed pixel loss falls: {First(mixed):F4} → {Last(mixed):F4}");
        Assert.AreEqual(Last(fp32), Last(mixed), 0.02 * Last(fp32), $"mixed ends within 2% of fp32 ({Last(fp32):F4})");
        Assert.AreNotEqual(fp32[^1], mixed[^1], "the mixed run did compute in bf16");
    }

    [TestMethod]
    public void MixedFineTuningTrainsTheFp32Masters()
    {
        using var scope = NewDisposeScope();
        var a = PretrainerTests.Tiny;
        using var model = new ImageClassifier(new VisionTransformerEncoder(a), 4, linearProbe: false, sourceBlock: a.Depth - 1);
        using (var generator = new Generator(3))
        {
            model.Encoder.Initialize(generator);
            model.Head.Initialize(generator);
        }

        MixedPrecision.Apply(model, true);
        model.train();
        // As the engine: the fixed PE never trains, and the final LN (replaced by identity) gets no gradient.
        foreach (var (name, p) in model.named_parameters())
        {
            p.requires_grad = name != "encoder.pos_embed" && !name.StartsWith("encoder.norm.", StringComparison.Ordinal);
        }

        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = new OwnedAdamW(new[] { new OwnedAdamW.ParamGroup(parameters, 2e-3, 0.0, 0.9, 0.999, 1e-8) });
        using var g = new Generator(5);
        var images = randn(new long[] { 8, 1, 28, 28 }, generator: g);
        var labels = tensor(new long[] { 0, 1, 2, 3, 0, 1, 2, 3 });
        var losses = new List<float>();
        for (int step = 0; step < 30; step++)
        {
            using var stepScope = NewDisposeScope();
            optimizer.ZeroGrad();
            var logits = model.forward(images);
            Assert.AreEqual(ScalarType.Float32, logits.dtype, "logits (and so the loss) in fp32");
            var loss = nn.functional.cross_entropy(logits, labels);
            loss.backward();
            Assert.IsTrue(parameters.All(p => p.grad is { dtype: ScalarType.Float32 }), "fp32 gradients at every trainable master");
            optimizer.Step();
            losses.Add(loss.item<float>());
        }

        Assert.IsLessThan(0.5 * losses[0], losses[^1], $"memorising 8 images: {losses[0]:F3} → {losses[^1]:F3}");
        Assert.IsTrue(model.parameters().All(p => p.dtype == ScalarType.Float32));
        for (int i = 0; i < parameters.Count; i++)
        {
            Assert.AreEqual(ScalarType.Float32, optimizer.StateOf(i).ExpAvg.dtype);
        }
    }

    [TestMethod]
    public void TrainersHonourBFloat16MixedAndFallBackToFp32WhereBf16IsSlow()
    {
        var split = FashionMnistSample.LoadArrays(trainPerClass: 4, testPerClass: 1).Train;
        var pixels = new float[split.Count * 28 * 28];
        for (int i = 0; i < split.Count; i++)
        {
            split.GetImage(i).CopyTo(pixels, i * 28 * 28);
        }

        var labels = split.Labels.Select(l => (int)l).ToArray();
        bool fast = TorchDevices.HasFastBFloat16(CPU);
        (List<float> Pretrain, List<float> FineTune, List<string> Log) Run(BootMaePrecision precision)
        {
            var pre = new List<float>();
            var fine = new List<float>();
            var log = new List<string>();
            var settings = new BootMaePretrainerSettings
            {
                MaxEpochs = 1, BatchSize = 8, LearningRate = 3e-2, Seed = 5, Device = BootMaeDevice.Cpu, Precision = precision, LogEveryNSteps = 1,
            };
            var hooks = new PretrainingHooks
            {
                AfterStep = t => Assert.AreEqual(precision == BootMaePrecision.BFloat16Mixed && fast,
                    t.Network.modules().OfType<IMixedPrecisionModule>().All(m => m.MixedPrecision), "the student is mixed exactly where bf16 is fast"),
            };
            using var encoder = new BootMaePretrainer(PretrainerTests.Tiny, settings) { Hooks = hooks }
                .Train(new InMemoryImageSource(pixels, null, split.Count, 1, 28, 11, shuffle: true), m => pre.Add(m.Loss), log.Add);
            var tune = new FineTuneSettings
            {
                MaxEpochs = 1, MaxSteps = 3, BatchSize = 8, LearningRate = 2e-3, Seed = 11, Device = BootMaeDevice.Cpu, LogEveryNSteps = 1, Precision = precision,
            };
            using var engine = ImageClassifierEngine.Train(encoder, 10, new InMemoryImageSource(pixels, labels, split.Count, 1, 28, 7, shuffle: true), null, tune,
                m => fine.Add(m.Loss), log.Add, CancellationToken.None);
            Assert.IsFalse(engine.Model.modules().OfType<IMixedPrecisionModule>().Any(m => m.MixedPrecision), "the fine-tuned model predicts in fp32");
            return (pre, fine, log);
        }

        var fp32 = Run(BootMaePrecision.Float32);
        var mixed = Run(BootMaePrecision.BFloat16Mixed);
        Assert.IsTrue(fp32.Pretrain.Count >= 5 && fp32.FineTune.Count >= 3, $"reports: {fp32.Pretrain.Count} pretraining, {fp32.FineTune.Count} fine-tuning");
        if (fast)
        {
            Assert.IsTrue(mixed.Log.Any(l => l.StartsWith("Mixed precision:", StringComparison.Ordinal)), string.Join(" | ", mixed.Log));
            Assert.AreEqual(fp32.Pretrain[^1], mixed.Pretrain[^1], 2e-2 * fp32.Pretrain[^1], "mixed pretraining loss near fp32");
        }
        else
        {
            // No slow bf16 work: said once per trainer, then exactly the fp32 run.
            Assert.AreEqual(2, mixed.Log.Count(l => l.StartsWith("bf16: not fast here", StringComparison.Ordinal)), string.Join(" | ", mixed.Log));
            CollectionAssert.AreEqual(fp32.Pretrain, mixed.Pretrain, "pretraining identical to fp32");
            CollectionAssert.AreEqual(fp32.FineTune, mixed.FineTune, "fine-tuning identical to fp32");
        }
    }

    [TestMethod]
    public void ConfigureUsesMixedPrecisionOnlyWhereBf16IsFast()
    {
        using var scope = NewDisposeScope();
        using var net = new BootMaeNetwork(ParityTests.Architecture, OfficialSettings.Create());
        bool On() => net.modules().OfType<IMixedPrecisionModule>().All(m => m.MixedPrecision);
        foreach (var precision in new[] { BootMaePrecision.Float32, BootMaePrecision.BFloat16 })
        {
            using var run = MixedPrecision.Configure(net, precision, CPU, null);
            Assert.IsFalse(run.Enabled, precision.ToString());
            Assert.IsFalse(net.modules().OfType<IMixedPrecisionModule>().Any(m => m.MixedPrecision), precision + " leaves the student fp32");
        }

        var log = new List<string>();
        using (var run = MixedPrecision.Configure(net, BootMaePrecision.BFloat16Mixed, CPU, log.Add))
        {
            if (TorchDevices.HasFastBFloat16(CPU))
            {
                Assert.IsTrue(run.Enabled && On(), "fast bf16 here: mixed");
            }
            else
            {
                Assert.IsFalse(run.Enabled || net.modules().OfType<IMixedPrecisionModule>().Any(m => m.MixedPrecision), "no fast bf16 here: fp32");
                Assert.IsTrue(log.Any(l => l.StartsWith("bf16: not fast here", StringComparison.Ordinal)), string.Join(" | ", log));
            }
        }

        Assert.IsFalse(net.modules().OfType<IMixedPrecisionModule>().Any(m => m.MixedPrecision), "disposing the run switches it off");
    }
}
