using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The fine-tuning engine on a tiny ViT (width 32, depth 2, 28² Fashion-MNIST with 7-pixel patches).</summary>
[TestClass]
public sealed class FineTuneTests
{
    private const int Classes = 10;

    private static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 28, PatchSize = 7, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static readonly Lazy<(float[] Pixels, int[] Labels)> Data = new(() =>
    {
        var train = FashionMnistSample.LoadArrays(trainPerClass: 30, testPerClass: 0).Train;
        var pixels = new float[train.Count * 28 * 28];
        for (int i = 0; i < train.Count; i++)
        {
            train.GetImage(i).CopyTo(pixels, i * 28 * 28);
        }

        return (pixels, train.Labels.Select(l => (int)l).ToArray());
    });

    private static int Count => Data.Value.Labels.Length;

    private static InMemoryImageSource Source(int seed = 7, bool shuffle = true) =>
        new(Data.Value.Pixels, Data.Value.Labels, Count, 1, 28, seed, shuffle);

    private static FineTuneSettings Settings(int epochs = 2) => new()
    {
        MaxEpochs = epochs, BatchSize = 32, LearningRate = 2e-3, Seed = 11, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0,
    };

    private static Dictionary<string, float[]> Weights(nn.Module module)
    {
        using var scope = NewDisposeScope();
        return module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray());
    }

    private static double TrainingAccuracy(ImageClassifierEngine engine)
    {
        var scores = engine.PredictScores(Data.Value.Pixels, Count);
        int correct = 0;
        for (int i = 0; i < Count; i++)
        {
            var row = scores.AsSpan(i * Classes, Classes);
            if (row.IndexOf(MaxOf(row)) == Data.Value.Labels[i])
            {
                correct++;
            }
        }

        return (double)correct / Count;
    }

    private static float MaxOf(ReadOnlySpan<float> values)
    {
        float max = float.NegativeInfinity;
        foreach (var v in values)
        {
            max = Math.Max(max, v);
        }

        return max;
    }

    private static byte[] Bytes(ImageClassifierEngine engine)
    {
        using var stream = new MemoryStream();
        engine.Save(stream);
        return stream.ToArray();
    }

    [TestMethod]
    public void FineTuningLearnsAboveChanceAndLeavesTheInputEncoderUnchanged()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 1);
        var before = Weights(encoder.Module);
        var reports = new List<BootMaeTrainingMetrics>();

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, Settings(epochs: 6), reports.Add, null, CancellationToken.None);

        double accuracy = TrainingAccuracy(engine);
        Assert.IsGreaterThan(0.3, accuracy, $"training-set accuracy after 6 epochs (chance is 0.1), got {accuracy:P1}");
        Assert.HasCount(6, reports.Where(r => r.IsEpochEnd && r.Dataset == BootMaeDataset.Train).ToList());
        Assert.IsLessThan(reports.First().Loss, reports.Last().Loss, "the epoch loss decreases");
        var after = Weights(encoder.Module);
        foreach (var (key, value) in before)
        {
            CollectionAssert.AreEqual(value, after[key], $"the caller's encoder is not modified ({key})");
        }

        var scores = engine.PredictScores(Data.Value.Pixels, 3);
        Assert.HasCount(3 * Classes, scores);
        Assert.AreEqual(1.0, scores.Take(Classes).Sum(), 1e-5, "scores are probabilities");
    }

    [TestMethod]
    public void LinearProbeTrainsOnlyTheHead()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var settings = Settings(epochs: 6);
        settings.LearningRate = 1e-2;
        settings.FreezeEncoder = true;
        settings.SourceBlock = 0;

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);

        Assert.IsTrue(engine.IsLinearProbe);
        Assert.AreEqual(0, engine.SourceBlock);
        var original = Weights(encoder.Module);
        using var extracted = engine.ExtractEncoder();
        foreach (var (key, value) in Weights(extracted.Module))
        {
            CollectionAssert.AreEqual(original[key], value, $"frozen encoder weight {key} is bit-identical");
        }

        var head = Weights(engine.Model.Head);
        Assert.IsTrue(head.ContainsKey("bn.running_mean"), "the probe head has a BatchNorm");
        Assert.IsTrue(head["fc_norm.weight"].All(v => v == 1f), "fc_norm stays the frozen unit LN");
        Assert.IsTrue(head["head.bias"].Any(v => v != 0f), "the Linear trained");
        double accuracy = TrainingAccuracy(engine);
        Assert.IsGreaterThan(0.3, accuracy, $"the probe learns above chance (0.1), got {accuracy:P1}");
    }

    [TestMethod]
    public void LayerDecayScalesFollowSpec()
    {
        // The official numbers for ViT-B (BEiT/BootMAE run_class_finetuning, layer_decay 0.65, 12 blocks): the list
        // 0.65 ** (12 + 1 - i) for i in 0..13, written out; layer id 0 = cls_token, pos_embed, patch_embed; k + 1 = block k;
        // 13 = everything after the blocks (fc_norm, head).
        double[] official =
        {
            0.003697205891018715, 0.005688009063105715, 0.008750783174008792, 0.013462743344628911, 0.02071191283789063,
            0.03186448128906251, 0.049022278906250015, 0.07541889062500001, 0.11602906250000002, 0.17850625000000003,
            0.274625, 0.4225, 0.65, 1.0,
        };
        Assert.AreEqual(official[0], ImageClassifierEngine.LayerDecayScale("encoder.cls_token", 12, 0.65), 1e-15);
        Assert.AreEqual(official[0], ImageClassifierEngine.LayerDecayScale("encoder.pos_embed", 12, 0.65), 1e-15);
        Assert.AreEqual(official[0], ImageClassifierEngine.LayerDecayScale("encoder.patch_embed.proj.weight", 12, 0.65), 1e-15);
        for (int block = 0; block < 12; block++)
        {
            Assert.AreEqual(official[block + 1], ImageClassifierEngine.LayerDecayScale($"encoder.blocks.{block}.attn.qkv.weight", 12, 0.65), 1e-15, $"block {block}");
            Assert.AreEqual(official[block + 1], ImageClassifierEngine.LayerDecayScale($"encoder.blocks.{block}.mlp.fc2.bias", 12, 0.65), 1e-15, $"block {block}");
        }

        Assert.AreEqual(1.0, ImageClassifierEngine.LayerDecayScale("classifier.head.weight", 12, 0.65));
        Assert.AreEqual(1.0, ImageClassifierEngine.LayerDecayScale("classifier.fc_norm.bias", 12, 0.65));
        Assert.AreEqual(1.0, ImageClassifierEngine.LayerDecayScale("encoder.blocks.11.norm1.weight", 12, 1.0), "no decay");

        // The groups of the 2-block test model: ld^3 for the embedding, ld^2 and ld for the blocks, 1 for the head.
        const double ld = 0.65;
        var expectedScale = new (string Prefix, double Scale)[]
        {
            ("encoder.patch_embed.", 0.274625), ("encoder.cls_token", 0.274625), ("encoder.blocks.0.", 0.4225),
            ("encoder.blocks.1.", 0.65), ("classifier.", 1.0),
        };

        using var model = new ImageClassifier(new VisionTransformerEncoder(Tiny), Classes, linearProbe: false, sourceBlock: 1);
        foreach (var (name, p) in model.named_parameters())
        {
            p.requires_grad = name != "encoder.pos_embed" && !name.StartsWith("encoder.norm.", StringComparison.Ordinal);
        }

        var groups = ImageClassifierEngine.BuildParameterGroups(model, ld, 0.05);
        var listed = groups.SelectMany(g => g.Parameters.Select(p => (p.Name, g.LearningRateScale, g.WeightDecay))).ToList();
        Assert.HasCount(listed.Count, listed.Select(x => x.Name).Distinct().ToList(), "each parameter is in one group");
        Assert.IsFalse(listed.Any(x => x.Name == "encoder.pos_embed" || x.Name.StartsWith("encoder.norm.", StringComparison.Ordinal)), "the fixed PE and the unused final LN do not train");
        var dims = model.named_parameters().ToDictionary(x => x.name, x => x.parameter.dim());
        foreach (var (name, scale, wd) in listed)
        {
            Assert.AreEqual(expectedScale.Single(e => name.StartsWith(e.Prefix, StringComparison.Ordinal)).Scale, scale, 1e-12, name);
            // Spec §10.13: every 1-D tensor (biases, q/v biases, LN), and cls_token, are not decayed.
            bool noDecay = dims[name] <= 1 || name == "encoder.cls_token";
            Assert.AreEqual(noDecay ? 0.0 : 0.05, wd, name);
        }

        Assert.AreEqual(model.parameters().Count(p => p.requires_grad), listed.Count);
    }

    [TestMethod]
    public void DropPathKeepsKeysAndOnlyActsInTraining()
    {
        using var encoder = new VisionTransformerEncoder(Tiny);
        var keys = encoder.state_dict().Keys.ToList();
        using var generator = new Generator(9);
        encoder.Initialize(generator);
        using var scope = NewDisposeScope();
        var images = (rand(new long[] { 8, 1, 28, 28 }, generator: generator) * 2) - 1;
        encoder.train();
        var plain = encoder.ForwardRaw(images, 1);

        encoder.SetDropPath(0.5, generator);

        CollectionAssert.AreEqual(keys, encoder.state_dict().Keys.ToList(), "drop path adds no state_dict keys");
        Assert.AreEqual(0.0, encoder.Blocks[0].DropPath.Rate, "rate rises linearly from 0 at block 0");
        Assert.AreEqual(0.5, encoder.Blocks[1].DropPath.Rate);
        Assert.IsFalse(plain.allclose(encoder.ForwardRaw(images, 1)), "training mode drops paths");
        encoder.eval();
        Assert.IsTrue(plain.allclose(encoder.ForwardRaw(images, 1), rtol: 0, atol: 0), "eval mode is the identity");
    }

    [TestMethod]
    public void PoolingAveragesPatchTokensWithoutCls()
    {
        using var model = new ImageClassifier(new VisionTransformerEncoder(Tiny), Classes, linearProbe: false, sourceBlock: 1);
        using var generator = new Generator(5);
        model.Encoder.Initialize(generator);
        model.eval();
        using var scope = NewDisposeScope();
        using var mode = inference_mode();
        var images = (rand(new long[] { 2, 1, 28, 28 }, generator: generator) * 2) - 1;

        var features = model.Features(images);
        var tokens = model.Encoder.ForwardRaw(images, 1);

        Assert.IsTrue(features.allclose(tokens[.., 1..].mean(new long[] { 1 }), rtol: 0, atol: 1e-6), "features = mean of the N patch tokens");
        Assert.IsFalse(features.allclose(tokens.mean(new long[] { 1 }), rtol: 0, atol: 1e-6), "the cls token is not averaged in");
        Assert.IsFalse(features.allclose(model.Encoder.ForwardTokens(images, 1)[.., 1..].mean(new long[] { 1 }), rtol: 0, atol: 1e-6), "the final LN is not applied");
    }

    [TestMethod]
    public void SaveLoadRoundTripGivesIdenticalScoresAndClearErrors()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 4);
        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, Settings(epochs: 1), null, null, CancellationToken.None);
        using var stream = new MemoryStream();
        engine.Save(stream);
        long end = stream.Position;
        stream.WriteByte(42);

        stream.Position = 0;
        using var loaded = ImageClassifierEngine.Load(stream, Tiny, Classes);

        Assert.AreEqual(end, stream.Position, "Load reads exactly the classifier's bytes");
        Assert.AreEqual(Classes, loaded.NumberOfClasses);
        Assert.AreEqual(Tiny, loaded.Architecture);
        CollectionAssert.AreEqual(engine.PredictScores(Data.Value.Pixels, 16), loaded.PredictScores(Data.Value.Pixels, 16));

        stream.Position = 0;
        var wrongK = Assert.ThrowsExactly<InvalidDataException>(() => ImageClassifierEngine.Load(stream, Tiny, 3));
        StringAssert.Contains(wrongK.Message, "10 classes");
        StringAssert.Contains(wrongK.Message, "3 were expected");

        stream.Position = 0;
        var other = Tiny with { Depth = 3 };
        var wrongArchitecture = Assert.ThrowsExactly<InvalidDataException>(() => ImageClassifierEngine.Load(stream, other, Classes));
        StringAssert.Contains(wrongArchitecture.Message, "Depth = 2");
        StringAssert.Contains(wrongArchitecture.Message, "Depth = 3");

        var bytes = stream.ToArray();
        bytes[^10] ^= 0xFF;
        var damaged = Assert.ThrowsExactly<InvalidDataException>(() => ImageClassifierEngine.Load(new MemoryStream(bytes[..(int)end]), Tiny, Classes));
        StringAssert.Contains(damaged.Message, "SHA-256");
    }

    [TestMethod]
    public void SameSeedGivesBitIdenticalWeights()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 5);
        var settings = Settings(epochs: 1);
        settings.Augment = true;
        settings.MixupAlpha = 0.8;
        settings.CutmixAlpha = 1.0;
        settings.DropPathRate = 0.2;

        using var first = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);
        using var second = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);
        settings.Seed++;
        using var third = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);

        CollectionAssert.AreEqual(Bytes(first), Bytes(second), "same seed, same data → same bytes");
        CollectionAssert.AreNotEqual(Bytes(first), Bytes(third), "another seed gives other weights");
    }

    [TestMethod]
    public void CancellationThrowsOrReturnsTheModelSoFar()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 6);
        var settings = Settings(epochs: 3);
        settings.LogEveryNSteps = 1;
        var steps = new List<long>();
        using (var cts = new CancellationTokenSource())
        {
            void CancelAtStep3(BootMaeTrainingMetrics m)
            {
                steps.Add(m.Step);
                if (m.Step == 3)
                {
                    cts.Cancel();
                }
            }

            Assert.Throws<OperationCanceledException>(() => ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, CancelAtStep3, null, cts.Token));
            Assert.AreEqual(3L, steps.Max(), "no step runs after cancellation");
        }

        settings.ReturnModelOnCancellation = true;
        using (var cts = new CancellationTokenSource())
        {
            void CancelAtStep3(BootMaeTrainingMetrics m)
            {
                if (m.Step == 3)
                {
                    cts.Cancel();
                }
            }

            using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, CancelAtStep3, null, cts.Token);
            Assert.HasCount(4 * Classes, engine.PredictScores(Data.Value.Pixels, 4));
        }
    }

    [TestMethod]
    public void TrainingStepsDoNotLeakTensors()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 7);
        var settings = Settings(epochs: 1);
        settings.BatchSize = 16;
        settings.LogEveryNSteps = 1;
        settings.Augment = true;
        settings.MixupAlpha = 0.8;
        var live = new List<long>();
        void Record(BootMaeTrainingMetrics m)
        {
            if (!m.IsEpochEnd)
            {
                live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
            }
        }

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, Record, null, CancellationToken.None);

        Assert.IsGreaterThan(10, live.Count);
        // The optimizer's state appears at the first step; from then on the count of live tensors is flat.
        CollectionAssert.AreEqual(Enumerable.Repeat(live[1], live.Count - 1).ToList(), live.Skip(1).ToList(), "live tensors per step");
    }

    [TestMethod]
    public void EarlyStoppingStopsAndValidationIsReported()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 8);
        var settings = Settings(epochs: 10);
        settings.EarlyStoppingPatience = 2;
        // No later epoch can beat the first by this much, so the run stops after epochs 1 and 2 fail to improve.
        settings.EarlyStoppingMinDelta = 100;
        var reports = new List<BootMaeTrainingMetrics>();
        var validation = new InMemoryImageSource(Data.Value.Pixels, Data.Value.Labels, 64, 1, 28, seed: 0, shuffle: false);

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), validation, settings, reports.Add, null, CancellationToken.None);

        var validationReports = reports.Where(r => r.Dataset == BootMaeDataset.Validation).ToList();
        CollectionAssert.AreEqual(new[] { 0, 1, 2 }, validationReports.Select(r => r.Epoch).ToArray(), "stopped after 3 of 10 epochs");
        Assert.IsTrue(validationReports.All(r => r.Accuracy is >= 0f and <= 1f && float.IsFinite(r.Loss)));
    }

    [TestMethod]
    public void ReturnBestModelRestoresTheBestEpochsWeights()
    {
        // Validation labels are right in epoch 0 and one class off from epoch 1 on, so the last epoch is the worse one.
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 13);
        var validation = new LabelsGoWrongAfterEpoch0(ValidationSource());
        Assert.IsTrue(new FineTuneSettings().ReturnBestModel, "on by default");
        var reports = new List<BootMaeTrainingMetrics>();
        var log = new List<string>();
        using var best = ImageClassifierEngine.Train(encoder, Classes, Source(), validation, Settings(epochs: 2), reports.Add, log.Add, CancellationToken.None);

        var losses = reports.Where(r => r.Dataset == BootMaeDataset.Validation).Select(r => r.Loss).ToList();
        Assert.HasCount(2, losses);
        Assert.IsGreaterThan(losses[0], losses[1], "the construction: epoch 1 validates worse than epoch 0");
        Assert.IsTrue(log.Any(l => l.StartsWith("Restored the weights of epoch 0", StringComparison.Ordinal)), string.Join("\n", log));

        var lastSettings = Settings(epochs: 2);
        lastSettings.ReturnBestModel = false;
        using var last = ImageClassifierEngine.Train(encoder, Classes, Source(), new LabelsGoWrongAfterEpoch0(ValidationSource()), lastSettings, null, null, CancellationToken.None);

        // Epoch 0's weights under the same schedule: the same run, stopped (and returned as it is) right after epoch 0's validation.
        var firstSettings = Settings(epochs: 2);
        firstSettings.ReturnBestModel = false;
        firstSettings.ReturnModelOnCancellation = true;
        using var cts = new CancellationTokenSource();
        using var epoch0 = ImageClassifierEngine.Train(encoder, Classes, Source(), new LabelsGoWrongAfterEpoch0(ValidationSource()), firstSettings, m =>
        {
            if (m.Dataset == BootMaeDataset.Validation && m.Epoch == 0)
            {
                cts.Cancel();
            }
        }, null, cts.Token);

        CollectionAssert.AreEqual(Bytes(epoch0), Bytes(best), "the returned weights are epoch 0's");
        CollectionAssert.AreNotEqual(Bytes(last), Bytes(best), "not the last epoch's");
    }

    [TestMethod]
    public void LayerDecayLearningRatesReachTheOptimizerGroups()
    {
        // Layer decay 0.5 on 2 blocks, written out: patch embedding and cls 0.125, block 0 0.25, block 1 0.5, fc_norm and head 1.
        var expected = new (string Prefix, double Scale)[]
        {
            ("encoder.patch_embed.", 0.125), ("encoder.cls_token", 0.125), ("encoder.blocks.0.", 0.25), ("encoder.blocks.1.", 0.5), ("classifier.", 1.0),
        };
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 12);
        var seen = new List<(long Step, double Scheduled, List<(string[] Names, double LearningRate)> Groups)>();
        var settings = new FineTuneSettings
        {
            MaxEpochs = 1, MaxSteps = 3, BatchSize = 32, LearningRate = 2e-3, Seed = 11, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0, LayerDecay = 0.5,
            AfterStep = t => seen.Add((t.Step, t.ScheduledLearningRate,
                t.Groups.Select((g, i) => (g.Parameters.Select(p => p.Name).ToArray(), t.OptimizerGroups[i].LearningRate)).ToList())),
        };

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);

        CollectionAssert.AreEqual(new long[] { 0, 1, 2 }, seen.Select(s => s.Step).ToArray());
        Assert.AreEqual(2e-3, seen[0].Scheduled, 1e-15, "no warmup step in 3 steps: the cosine starts at the peak");
        foreach (var (step, scheduled, groups) in seen)
        {
            Assert.IsGreaterThan(4, groups.Count, "one group per layer id and decay kind");
            foreach (var (names, learningRate) in groups)
            {
                var scales = names.Select(n => expected.Single(e => n.StartsWith(e.Prefix, StringComparison.Ordinal)).Scale).Distinct().ToList();
                Assert.HasCount(1, scales, $"one layer id per group: {string.Join(", ", names)}");
                Assert.AreEqual(scheduled * scales[0], learningRate, 1e-15, $"step {step}, {names[0]}");
            }
        }
    }

    [TestMethod]
    public void HeadWarmupKeepsTheEncoderFixedThenTrainsIt()
    {
        // 300 images, batch 32: 10 steps per epoch, 3 epochs = 30 steps; a warm-up share of 0.4 is 12 head-only steps.
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 13);
        var initial = Weights(encoder.Module);
        var encoderChanged = new List<(long Step, bool Changed)>();
        var headChanged = new List<bool>();
        float[]? headBefore = null;
        var settings = new FineTuneSettings
        {
            MaxEpochs = 3, BatchSize = 32, LearningRate = 2e-3, Seed = 11, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0, HeadWarmupFraction = 0.4,
            AfterStep = t =>
            {
                var parameters = t.Groups.SelectMany(g => g.Parameters).ToDictionary(p => p.Name, p => p.Parameter);
                using var scope = NewDisposeScope();
                bool changed = initial.Any(kv => parameters.TryGetValue("encoder." + kv.Key, out var p) && !kv.Value.SequenceEqual(p.detach().cpu().data<float>().ToArray()));
                encoderChanged.Add((t.Step, changed));
                var head = parameters["classifier.head.weight"].detach().cpu().data<float>().ToArray();
                headChanged.Add(headBefore is not null && !head.SequenceEqual(headBefore));
                headBefore = head;
            },
        };

        using var engine = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);

        Assert.HasCount(30, encoderChanged);
        CollectionAssert.AreEqual(Enumerable.Repeat(false, 12).ToArray(), encoderChanged.Take(12).Select(e => e.Changed).ToArray(),
            "the encoder is bit-identical to its start during the 12 head-only steps (no update, no weight decay)");
        Assert.IsTrue(encoderChanged[12].Changed, "the encoder trains from step 12 on");
        Assert.IsTrue(headChanged.Skip(1).Take(11).All(c => c), "the head trains during the warm-up");
        double accuracy = TrainingAccuracy(engine);
        Assert.IsGreaterThan(0.3, accuracy, $"the run still learns (chance is 0.1), got {accuracy:P1}");
        using var off = ImageClassifierEngine.Train(encoder, Classes, Source(), null, Settings(epochs: 3), null, null, CancellationToken.None);
        CollectionAssert.AreNotEqual(Bytes(off), Bytes(engine), "the warm-up changes the run");
    }

    [TestMethod]
    [DataRow(100, 10, 0.3, DisplayName = "10 per class: the measured few-label case")]
    [DataRow(200, 10, 0.3, DisplayName = "20 per class: the last that warms up")]
    [DataRow(201, 10, 0.0, DisplayName = "just over 20 per class")]
    [DataRow(1000, 10, 0.0, DisplayName = "100 per class: the measured case where it hurt")]
    [DataRow(0, 10, 0.0, DisplayName = "no images")]
    public void AutomaticHeadWarmupOnlyWithFewLabelsPerClass(int images, int classes, double expected)
    {
        Assert.AreEqual(expected, FineTuneSettings.AutoHeadWarmupFraction(images, classes));
        Assert.AreEqual(expected, new FineTuneSettings().HeadWarmupFractionFor(images, classes), "null is the automatic choice");
        Assert.AreEqual(0.1, new FineTuneSettings { HeadWarmupFraction = 0.1 }.HeadWarmupFractionFor(images, classes), "a set value wins");
    }

    [TestMethod]
    public void AutomaticHeadWarmupFixesTheEncoderForThirtyPercentOfAFewLabelRun()
    {
        // 100 images of 10 classes (10 per class), batch 20: 5 steps per epoch, 4 epochs = 20 steps; 0.3 of them = 6 head-only steps.
        var data = Data.Value;
        var source = new InMemoryImageSource(data.Pixels.AsSpan(0, 100 * 28 * 28).ToArray(), data.Labels.Take(100).ToArray(), 100, 1, 28, 7, shuffle: true);
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 13);
        var initial = Weights(encoder.Module);
        var encoderChanged = new List<bool>();
        var settings = new FineTuneSettings
        {
            MaxEpochs = 4, BatchSize = 20, LearningRate = 2e-3, Seed = 11, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0,
            AfterStep = t =>
            {
                var parameters = t.Groups.SelectMany(g => g.Parameters).ToDictionary(p => p.Name, p => p.Parameter);
                using var scope = NewDisposeScope();
                encoderChanged.Add(initial.Any(kv => parameters.TryGetValue("encoder." + kv.Key, out var p) && !kv.Value.SequenceEqual(p.detach().cpu().data<float>().ToArray())));
            },
        };

        var log = new List<string>();
        using var engine = ImageClassifierEngine.Train(encoder, Classes, source, null, settings, null, log.Add, CancellationToken.None);

        Assert.HasCount(20, encoderChanged);
        Assert.IsTrue(log.Any(l => l.Contains("the first 6 steps train only the head (HeadWarmupFraction automatic", StringComparison.Ordinal)), string.Join("\n", log));
        CollectionAssert.AreEqual(new[] { false, false, false, false, false, false, true }, encoderChanged.Take(7).ToArray(),
            "the default (null) warms the head up for 6 of the 20 steps with 10 labels per class");
    }

    // Validation batches with the right labels in epoch 0 and every label one class off afterwards.
    private sealed class LabelsGoWrongAfterEpoch0(IImageBatchSource inner) : IImageBatchSource
    {
        public long? Count => inner.Count;

        public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken) =>
            epoch == 0
                ? inner.ReadEpoch(epoch, batchSize, cancellationToken)
                : inner.ReadEpoch(epoch, batchSize, cancellationToken).Select(b => b with { Labels = b.Labels!.Select(l => (l + 1) % Classes).ToArray() });
    }

    [TestMethod]
    public void InMemorySourceShufflesPerEpochDeterministically()
    {
        var pixels = Enumerable.Range(0, 10).Select(i => (float)i).ToArray();
        var labels = Enumerable.Range(0, 10).ToArray();
        var source = new InMemoryImageSource(pixels, labels, 10, 1, 1, seed: 3, shuffle: true);

        int[] Order(InMemoryImageSource s, int epoch) => s.ReadEpoch(epoch, 4, CancellationToken.None).SelectMany(b => b.Labels!).ToArray();

        CollectionAssert.AreEqual(Order(source, 0), Order(new InMemoryImageSource(pixels, labels, 10, 1, 1, seed: 3, shuffle: true), 0));
        CollectionAssert.AreNotEqual(Order(source, 0), Order(source, 1));
        CollectionAssert.AreEquivalent(labels, Order(source, 1));
        var first = source.ReadEpoch(0, 4, CancellationToken.None).First();
        Assert.AreEqual(first.Labels![2], (int)first.Pixels[2], "pixels travel with their labels");
    }

    private static string TempDirectory() => Path.Combine(Path.GetTempPath(), "bootmae-ftckpt-" + Guid.NewGuid().ToString("N"));

    private static InMemoryImageSource ValidationSource() => new(Data.Value.Pixels, Data.Value.Labels, 64, 1, 28, seed: 0, shuffle: false);

    private static FineTuneSettings ResumableSettings(bool augment, long? checkpointEvery)
    {
        // 300 images / 32 = 10 steps per epoch. Patience 5 never triggers in 3 epochs, but its state must carry over.
        var settings = Settings(epochs: 3);
        settings.LogEveryNSteps = 1;
        settings.EarlyStoppingPatience = 5;
        settings.CheckpointEveryNSteps = checkpointEvery;
        if (augment)
        {
            settings.Augment = true;
            settings.MixupAlpha = 0.8;
            settings.CutmixAlpha = 1.0;
            settings.DropPathRate = 0.2;
        }

        return settings;
    }

    [TestMethod]
    [DataRow(false, 0L)]
    [DataRow(true, 4L)]
    public void ResumeContinuesExactly(bool augment, long checkpointEvery)
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 9);
        long? every = checkpointEvery > 0 ? checkpointEvery : null;
        var straightReports = new List<BootMaeTrainingMetrics>();
        using var straight = ImageClassifierEngine.Train(encoder, Classes, Source(), ValidationSource(), ResumableSettings(augment, every),
            straightReports.Add, null, CancellationToken.None);

        var directory = TempDirectory();
        try
        {
            var firstHalf = ResumableSettings(augment, every);
            firstHalf.CheckpointDirectory = directory;
            using (var cts = new CancellationTokenSource())
            {
                // Mid-epoch 1: after the first epoch's best snapshot, between checkpoints.
                void CancelAtStep14(BootMaeTrainingMetrics m)
                {
                    if (m.Step == 14)
                    {
                        cts.Cancel();
                    }
                }

                Assert.Throws<OperationCanceledException>(() => ImageClassifierEngine.Train(encoder, Classes, Source(), ValidationSource(), firstHalf, CancelAtStep14, null, cts.Token));
            }

            var secondHalf = ResumableSettings(augment, every);
            secondHalf.CheckpointDirectory = directory;
            secondHalf.ResumeFromCheckpoint = true;
            var log = new List<string>();
            var reports = new List<BootMaeTrainingMetrics>();
            using var resumed = ImageClassifierEngine.Train(encoder, Classes, Source(), ValidationSource(), secondHalf, reports.Add, log.Add, CancellationToken.None);

            Assert.IsTrue(log.Any(l => l.Contains("Resumed from", StringComparison.Ordinal) && l.Contains("step 14", StringComparison.Ordinal)), "resumed from the checkpoint written on cancellation");
            Assert.AreEqual(15L, reports.Min(r => r.Step), "the resumed run starts at step 15");
            CollectionAssert.AreEqual(Bytes(straight), Bytes(resumed), "bit-identical weights");
            CollectionAssert.AreEqual(Scores(straight), Scores(resumed), "identical scores");
            // The epoch-end reports of the resumed epochs (training loss from restored running sums, validation) match too.
            var expected = straightReports.Where(r => r.IsEpochEnd && r.Epoch >= 1).Select(r => (r.Dataset, r.Epoch, r.Loss, r.Accuracy)).ToList();
            var actual = reports.Where(r => r.IsEpochEnd).Select(r => (r.Dataset, r.Epoch, r.Loss, r.Accuracy)).ToList();
            CollectionAssert.AreEqual(expected, actual);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [TestMethod]
    public void DamagedCheckpointIsSkippedForTheOlderOne()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 10);
        var settings = Settings(epochs: 2);
        using var straight = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None);

        var directory = TempDirectory();
        try
        {
            settings.CheckpointDirectory = directory;
            using (ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, null, CancellationToken.None))
            {
            }

            var newest = Path.Combine(directory, "step-00000020", "model.bin");
            var bytes = File.ReadAllBytes(newest);
            bytes[^1] ^= 1;
            File.WriteAllBytes(newest, bytes);

            settings.ResumeFromCheckpoint = true;
            settings.LogEveryNSteps = 1;
            var log = new List<string>();
            var steps = new List<long>();
            using var resumed = ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, m => steps.Add(m.Step), log.Add, CancellationToken.None);

            Assert.IsTrue(log.Any(l => l.Contains("step-00000020", StringComparison.Ordinal) && l.Contains("SHA-256", StringComparison.Ordinal)), "the damaged checkpoint is reported");
            Assert.IsTrue(log.Any(l => l.Contains("Resumed from", StringComparison.Ordinal) && l.Contains("step-00000010", StringComparison.Ordinal)));
            Assert.AreEqual(11L, steps.Min(), "the run goes on after the older checkpoint");
            CollectionAssert.AreEqual(Bytes(straight), Bytes(resumed));

            // Other run-shaping settings: no checkpoint fits, so the run starts over and says why.
            settings.LearningRate *= 2;
            log.Clear();
            using (ImageClassifierEngine.Train(encoder, Classes, Source(), null, settings, null, log.Add, CancellationToken.None))
            {
            }

            Assert.IsTrue(log.Any(l => l.Contains("different run settings", StringComparison.Ordinal)));
            Assert.IsFalse(log.Any(l => l.Contains("Resumed from", StringComparison.Ordinal)));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static float[] Scores(ImageClassifierEngine engine) => engine.PredictScores(Data.Value.Pixels, Count);
}
