# ruff: noqa
# GAN losses written with probabilities, and a REINFORCE policy loss.
import torch
import torch.nn as nn
import torch.nn.functional as F


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))

    def forward(self, x):
        return torch.sigmoid(self.main(x))


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.affine = nn.Linear(4, 2)

    def forward(self, state):
        return F.softmax(self.affine(state), dim=-1)


def d_step(D_net, real, fake):
    d_real = torch.sigmoid(D_net(real))
    d_fake = torch.sigmoid(D_net(fake))
    return -torch.mean(torch.log(d_real) + torch.log(1.0 - d_fake))  # expect: FG117, FG112


def g_step(G, z):
    D = Discriminator()
    return -torch.mean(torch.log(D(G(z))))  # expect: FG111


def reinforce(state, action, reward):
    policy = Policy()
    probs = policy(state)
    loss = -torch.log(probs[action]) * reward  # expect: FG111
    return loss


def word2vec_neg_sampling(pos_score, neg_score):
    return -(torch.log(torch.sigmoid(pos_score)) + torch.log(torch.sigmoid(-neg_score)).sum())  # expect: FG117


def kl_divergence(p, q):
    return (p * torch.log(p / q)).sum()  # expect: FG111


def asymmetric_loss(logits, y, eps=1e-8):
    xs_pos = torch.sigmoid(logits)
    return -(y * torch.log(xs_pos.clamp(min=eps))).sum()  # expect: FG104
